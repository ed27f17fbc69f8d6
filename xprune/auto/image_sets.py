"""Which images each figure of an `xprune auto` job comes from, kept apart: the layer scores on calib images, the
budget search on the first val images (`xprune.prune.budget.held_out_split`), the reported mAP and its verdict on
the val images after them. The benchmark evaluates val from its start; the verdict leaves the search's images out
of both rows' per-image evaluations, so no reported figure is measured on an image a choice was made on.
"""

from __future__ import annotations

from xprune.errors import XpruneError


def searched_images(plan: dict) -> dict | None:
    """The budget search's held-out images as the plan records them (`HeldOut.record`); None before they were."""
    held = (plan.get("budget") or {}).get("held_out")
    return held if isinstance(held, dict) else None


def bench_val_limit(val_images: int | None, held: dict | None, split: str = "val") -> int | None:
    """How many val images (from the start) the benchmark evaluates so that `val_images` are left after the
    search's; None: all of them."""
    if val_images is None:
        return None
    if held and held.get("split") == split:
        return int(held["first"]) + int(held["images"]) + val_images
    return val_images


def reported_rows(rows: list[dict], held: dict | None, split: str = "val") -> tuple[list[dict], dict]:
    """The rows with their per-image evaluations (`map_matches`) restricted to the images the search did not
    measure on, and what those images are: {"split", "images", "left_out"}."""
    from xprune.evaluate.image_matches import ImageMatches

    searched = set(held["image_ids"]) if held and held.get("split") == split else set()
    out, images = [], {"split": split, "images": 0, "left_out": 0}
    for row in rows:
        matches = ImageMatches.from_json(row["map_matches"], f"the per-image evaluation of {row.get('role')}")
        keep = [i for i, image_id in enumerate(matches.image_ids) if image_id not in searched]
        if not keep:
            raise XpruneError(f"every benchmarked {split} image was one the budget search measured on: no image is "
                              "left for the reported mAP (use more val images)")
        out.append({**row, "map_matches": matches.subset(keep).to_json()})
        images.update(images=len(keep), left_out=len(matches.image_ids) - len(keep))
    return out, images


__all__ = ["bench_val_limit", "reported_rows", "searched_images"]
