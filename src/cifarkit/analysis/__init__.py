"""The inspection wing: looking at a network and its results without training it. `tracer` follows one
forward pass; `rules` turns that into the receptive-field table and the course-rule verdicts; `summary`
prints the layer table; `metrics` counts predictions; `gradcam`, `lrfind` and `plots` make the figures."""
