"""The `pretrain` and `finetune` stages (`python -m tasks.train pretrain|finetune`): the model
factory, the training loop with its batch plan, checkpoints (the published reader of this
stage's output: `tasks.train.checkpoints`), sample checks and the Optuna pruning callback.
"""
