"""Ranks of DDP training runs in their own (spawned) processes, for tests/test_train.py. Kept out of
the test module, whose imports (timm at the top) would run before the package's torchvision fix."""
import os


def ddp_rank(rank: int, ports: list, argvs: list, queue) -> None:
    """One rank of 2-process DDP runs on CPU (gloo), one per argv of ``argvs``, one after another in
    this process (each run sets up and ends its own process group, on its own port of ``ports``: a
    second rendezvous on the first's port hangs): puts ``(rank, [(summary, its
    trainable weights) per run])``, or ``(rank, "Error: message")`` at the first run that fails."""
    import torch

    from stadapter_fast import train

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1")
    torch.set_num_threads(1)
    seen = {}
    write_outputs = train.write_outputs

    def keep_weights(tr, *a):
        # as numpy: a tensor crosses a Queue by a handle into this process, which exits after the put
        seen.update({n: p.detach().numpy().copy() for n, p in tr.model.named_parameters() if p.requires_grad})
        return write_outputs(tr, *a)

    train.write_outputs = keep_weights
    runs = []
    try:
        for argv, port in zip(argvs, ports, strict=True):
            os.environ["MASTER_PORT"], seen = str(port), {}
            runs.append((train.main(argv), seen))
        queue.put((rank, runs))
    except BaseException as e:  # noqa: BLE001  the parent names it
        queue.put((rank, f"{type(e).__name__}: {e}"))
