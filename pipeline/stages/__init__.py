"""The DVC stages, one thin module each: read its params.yaml sections and input files, call the
library, write its outputs and metrics. dvc.yaml runs them (`python -m pipeline.stages.<name>`);
nothing imports them (tests/unit/test_layout.py): stages meet through files."""
