"""`python -m pipeline.train`: the train stage (pipeline/stages/train.py), run as `python -m` would run it."""

import runpy

if __name__ == "__main__":
    runpy.run_module("pipeline.stages.train", run_name="__main__", alter_sys=True)
