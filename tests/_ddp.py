"""A rank of a DDP training run in its own (spawned) process, for tests/test_train.py. Kept out of
the test module, whose imports (timm at the top) would run before the package's torchvision fix."""
import os


def ddp_rank(rank: int, port: int, argv: list, queue, stacks_after_s: float) -> None:
    """One rank of a 2-process DDP run on CPU (gloo): puts ``(rank, summary, its trainable weights)``,
    or ``(rank, "Error: message", None)``. Still running after ``stacks_after_s``, it prints every
    thread's stack to stderr (where the test shows it), so that a hang names its place."""
    import faulthandler
    import sys

    faulthandler.dump_traceback_later(stacks_after_s, exit=False, file=sys.stderr)
    import torch

    from stadapter_fast import train

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    seen = {}
    write_outputs = train.write_outputs

    def keep_weights(tr, *a):
        # as numpy: a tensor crosses a Queue by a handle into this process, which exits after the put
        seen.update({n: p.detach().numpy().copy() for n, p in tr.model.named_parameters() if p.requires_grad})
        return write_outputs(tr, *a)

    train.write_outputs = keep_weights
    try:
        queue.put((rank, train.main(argv), seen))
    except BaseException as e:  # noqa: BLE001  the parent names it
        queue.put((rank, f"{type(e).__name__}: {e}", None))
    finally:
        faulthandler.cancel_dump_traceback_later()
