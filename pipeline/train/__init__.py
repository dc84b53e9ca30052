"""Fine-tuning: the trainer (TRL SFTTrainer with LoRA/DoRA/QLoRA), the loss, packing,
checkpoints and resume, the launch over processes and nodes, and the GPU memory plan.
`python -m pipeline.train [--plan]` runs the train stage (pipeline/stages/train.py)."""
