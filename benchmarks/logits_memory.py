"""Peak memory of the training loss over many response tokens at MiMo's vocabulary, chunked or not.

    python benchmarks/logits_memory.py                          # 32K tokens, hidden 512, 151,680 words, chunks of 1024
    python benchmarks/logits_memory.py --tokens 8192 --chunk 0  # the full-logits path (~15 GB at 8K; ~40 GB at 32K)

Computes the per-token cross-entropy of a (tokens, hidden) float32 activation through a bias-free head of
(vocab, hidden) (`mimovl.model.logits.chunked_token_losses`), a weighted sum as the RL loss takes, and its
backward, then prints the run's peak RSS. The last line is machine-readable: `peak_rss_gb=<value>`.
"""

import argparse
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402

from mimovl.model.logits import chunked_token_losses  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=32768)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=151680)
    parser.add_argument("--chunk", type=int, default=1024, help="tokens of logits at a time; 0: all at once")
    args = parser.parse_args()
    torch.manual_seed(0)
    head = torch.nn.Linear(args.hidden, args.vocab, bias=False)
    hidden = torch.randn(args.tokens, args.hidden, requires_grad=True)
    targets = torch.randint(0, args.vocab, (args.tokens,))
    weights = torch.randn(args.tokens) / args.tokens
    start = time.perf_counter()
    loss = (chunked_token_losses(hidden, head, targets, args.chunk) * weights).sum()
    loss.backward()
    seconds = time.perf_counter() - start
    finite = bool(torch.isfinite(loss)) and bool(torch.isfinite(hidden.grad).all())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print(f"tokens={args.tokens} hidden={args.hidden} vocab={args.vocab} chunk={args.chunk} "
          f"loss={float(loss.detach()):.6f} finite={finite} seconds={seconds:.1f}")
    print(f"peak_rss_gb={peak:.2f}")


if __name__ == "__main__":
    main()
