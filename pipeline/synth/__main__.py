"""`python -m pipeline.synth`: the synth stage (dvc repro synth), or with --export-batch /
--import-batch its teacher requests as OpenAI batch files (pipeline/synth/batch.py). vLLM starts
worker processes with spawn, which re-imports this module: the stage runs only under the guard below."""

from pipeline.synth.batch import cli

if __name__ == "__main__":
    cli()
