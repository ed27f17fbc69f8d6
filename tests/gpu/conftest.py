import pathlib

import pytest
import torch

HERE = pathlib.Path(__file__).parent


def pytest_collection_modifyitems(config, items):
    # Collection hooks see every item of the session, so only mark the ones in this folder.
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU")
    for item in items:
        if HERE in pathlib.Path(item.path).parents:
            item.add_marker(skip)
