"""Compile every kernel variant the launchers can produce for a GPU target, with no GPU present.

Run as a script *without* TRITON_INTERPRET (tests/csrc_triton/test_aot.py does it in a subprocess):
    python tests/csrc_triton/aot_compile.py 90 80
Prints one line per variant and exits non-zero on the first failure. Catches what the interpreter
lets through: block-shape and type rules, constexpr misuse, unsupported ops for the target.
"""
import itertools
import sys
import time

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

import csrc_triton.adapter_onepass as k1
import csrc_triton.dwconv_tokens as k

PTR_IO = {"X", "Y", "DZ", "DP", "Hh"}    # activation-dtype pointers
PTR_PARAM = {"Wt", "Bias", "Wc", "Bc", "W2", "B2"}  # parameter pointers (fp32 here; any float works)
PTR_ACC = {"PART"}                      # accumulation-dtype pointers
DIVISIBLE = {"sx_n", "sx_l", "sy_n", "sy_l", "sdz_n", "sdz_l", "sh_n", "sh_l", "C", "CA"}  # JIT sees these as multiples of 16
TY = {"fp16": "fp16", "bf16": "bf16", "fp32": "fp32", "fp64": "fp64"}
KERNELS = [(3, 1, 1), (3, 3, 3), (1, 3, 3), (5, 1, 1)]


def compile_one(fn, io, consts, arch):
    acc = "fp64" if io == "fp64" else "fp32"
    sig, attrs = {}, {}
    for i, a in enumerate(fn.arg_names):
        if a in consts:
            sig[a] = "constexpr"
            continue
        if a in PTR_IO:
            sig[a] = "*" + io
        elif a in PTR_PARAM:
            sig[a] = "*fp32"
        elif a in PTR_ACC:
            sig[a] = "*" + acc
        else:
            sig[a] = "i32"
        if a in PTR_IO | PTR_PARAM | PTR_ACC | DIVISIBLE:
            attrs[(i,)] = [["tt.divisibility", 16]]
    consts = dict(consts, ACC=tl.float64 if io == "fp64" else tl.float32)
    return triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs),
                          target=GPUTarget("cuda", arch, 32))


def variants():
    """(name, kernel, io dtype, constexprs): all activations x dtypes at (3,1,1), all kernel sizes,
    the transposed (FLIP) conv, the backward with and without a stored dpre; block sizes from the
    launcher's GPU choice for a ViT width (Ca=384) and a small one."""
    for C in (384, 20):
        bm, bc, warps = k._blocks(C * 64, C)
        blk = dict(BLOCK_M=bm, BLOCK_C=bc)
        for io, (act_name, act) in itertools.product(("fp16", "bf16", "fp32"), k.ACTIVATIONS.items()):
            if C != 384 and act_name != "gelu":
                continue
            ks = dict(KT=3, KH=1, KW=1)
            yield f"fwd-{io}-{act_name}-C{C}", k._dwconv_tokens_kernel, io, dict(ks, FLIP=False, HAS_BIAS=True, ACT=act, **blk)
            yield f"bwd-{io}-{act_name}-C{C}", k._dwconv_tokens_bwd_kernel, io, dict(ks, HAS_BIAS=True, ACT=act, STORE_DPRE=act != 0, **blk)
        for io, kss in itertools.product(("fp16", "bf16", "fp32", "fp64"), KERNELS):
            ks = dict(KT=kss[0], KH=kss[1], KW=kss[2])
            tag = f"{io}-k{''.join(map(str, kss))}-C{C}"
            yield f"fwd-{tag}", k._dwconv_tokens_kernel, io, dict(ks, FLIP=False, HAS_BIAS=True, ACT=2, **blk)
            yield f"flip-{tag}", k._dwconv_tokens_kernel, io, dict(ks, FLIP=True, HAS_BIAS=False, ACT=0, **blk)
            yield f"bwd-{tag}", k._dwconv_tokens_bwd_kernel, io, dict(ks, HAS_BIAS=False, ACT=3, STORE_DPRE=True, **blk)
    # the one-pass adapter tail (tensor-core dot for fp16/bf16, IEEE fp32/fp64 dot otherwise)
    bm, bn, bk, _ = k1._blocks(384, 768)
    for io, act_name in itertools.product(("fp16", "bf16", "fp32", "fp64"), ("none", "gelu", "quick_gelu")):
        for kss in ((3, 1, 1), (3, 3, 3)):
            consts = dict(KT=kss[0], KH=kss[1], KW=kss[2], HAS_CB=True, HAS_B2=True, ACT=k.ACTIVATIONS[act_name],
                          DOT_IEEE=io in ("fp32", "fp64"), BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk)
            yield f"onepass-{io}-{act_name}-k{''.join(map(str, kss))}", k1._onepass_fwd_kernel, io, consts


def main(archs):
    assert not k.INTERPRET, "run without TRITON_INTERPRET"
    n = 0
    for arch in archs:
        for name, fn, io, consts in variants():
            t = time.time()
            ck = compile_one(fn, io, consts, arch)
            ptx = ck.asm["ptx"]
            assert ".entry" in ptx and len(ck.asm["cubin"]) > 0, name
            print(f"sm_{arch} {name}: ok {time.time() - t:.2f}s shared={ck.metadata.shared} "
                  f"vector_loads={ptx.count('ld.global.v')}", flush=True)
            n += 1
    print(f"{n} variants compiled for triton {triton.__version__}")


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [90, 80])
