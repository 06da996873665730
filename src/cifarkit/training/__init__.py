"""Training: build a run (`build`), the one training step and its epoch loop (`step`), evaluation
(`evaluate`), the whole run (`trainer.fit`), the LR range test (`lrfind`) and a finished run read
back (`result`)."""
