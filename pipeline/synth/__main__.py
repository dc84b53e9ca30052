"""`python -m pipeline.synth`: the synth stage (dvc repro synth). vLLM starts worker processes
with spawn, which re-imports this module: the stage runs only under the guard below."""

from pipeline.synth.stage import main

if __name__ == "__main__":
    main()
