"""The `pretrain` stage: flow-matching pretraining on both caption styles (paper 000
§II-B, Table II).

Runs the same on CPU and under `accelerate launch -m tasks.pretrain` on GPUs; a killed run
resumes from its last checkpoint. The work is in tasks/training_stage.py and tasks/trainer.py.
"""

from __future__ import annotations

from tasks import training_stage
from tasks.params import load_stage_params


def main() -> None:
    summary = training_stage.run(load_stage_params(), "pretrain")
    if summary:
        print(
            f"pretrain: {summary['steps']} steps in {summary['wall_seconds']:.0f} s, val flow "
            f"matching {summary['first_val_flow_matching']:.4f} -> "
            f"{summary['val_flow_matching']:.4f}"
        )


if __name__ == "__main__":
    main()
