"""Running a model: one folder per backend (`pytorch/`, `onnxruntime/`, `tensorrt/`), each a loader that builds
what runs from a file or an object and a runner (`xprune.runtime.base.Runner`) that runs it; `registry` maps file
suffixes to backends, and `compare` checks two runners' outputs against each other."""
