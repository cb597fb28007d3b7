"""refad.pipeline: the numpy steps every scoring path shares, torch-free.

`preprocess` turns an image into the model's input array, the Scorer (torch or an exported
runtime) turns inputs into maps and scores, and `postprocess` turns a map and a score into one
`Prediction` (map at image size, defect mask, regions, decision) against a typed
`Calibration`. `refad test`, `refad predict` (`--run` and `--model`), both server backends and
`refad.deploy.Inferencer` all go through these, so a decision is made by one function.
Import the submodules directly; this package's `__init__` loads nothing.
"""
