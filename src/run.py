"""The one entry point: compose the config, train one stage, export, summarise.

    python src/run.py                                 # stage 1 on the tiny model and synthetic shards
    python src/run.py stage=s2 logger=csv             # the next stage, from s1's export
    python src/run.py +recipe=mimo_vl stage=rl        # the quickstart: GRPO with vLLM rollouts on CPU
    python src/run.py +recipe=mimo_vl stage=all       # s1 -> s2 -> s3 -> s4 -> rm_text -> rm -> rl -> eval
    python src/run.py +recipe=mimo_vl stage=s3 model=mimo_vl_7b model.vit_path=... model.llm_path=...
    python src/run.py stage=s2 -v                     # every library's log lines on the console too
"""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `python src/run.py` works without installing

from mimovl.cli import launch  # noqa: E402


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    return launch(cfg)  # summary[optimized_metric]: the value Hydra sweepers optimise


if __name__ == "__main__":
    # `-v` is `verbose=true`: every library's log lines on the console too.
    sys.argv = [("verbose=true" if arg in ("-v", "--verbose") else arg) for arg in sys.argv]
    main()
