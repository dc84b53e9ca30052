"""Stage synth (`python -m pipeline.synth`): the tasks (think, search, qgen: tasks.py) and the stage
(stage.py). The teacher runner, its engines and the request cache are library modules
(pipeline/teacher.py, engines.py, request_cache.py), shared with the judge and evaluate."""
