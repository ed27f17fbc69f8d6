"""Running a model: one folder per backend (`pytorch/`, `onnxruntime/`, `jax/`, `tensorrt/`, `onnx2torch/`), each a
loader that builds what runs from a file or an object and a runner (`xprune.runtime.base.Runner`) that runs it;
`registry` declares every backend (the files it opens, its label, whether it builds an engine from ONNX, runs
exported files for their mAP or runs a framework's detectors in memory) and is the only way in from outside this
package; `compare` checks two runners' outputs against each other."""
