"""The `pretrain` stage: flow-matching pretraining on both caption styles (paper 000
§II-B, Table II).

Runs the same on CPU and under `accelerate launch -m tasks.pretrain` on GPUs; a killed run
resumes from its last checkpoint. The work is in tasks/training_stage.py and tasks/trainer.py.
"""

from __future__ import annotations

from tasks import training_stage


def main() -> None:
    training_stage.main("pretrain")


if __name__ == "__main__":
    main()
