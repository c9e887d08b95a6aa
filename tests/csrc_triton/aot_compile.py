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

import csrc_triton.adapter_onepass as onepass
import csrc_triton.dwconv_tokens as dwconv
from csrc_triton.activations import ACTIVATIONS
from csrc_triton.common import INTERPRET

PTR_IO = {"X", "Y", "DZ", "DP", "Htok", "DY", "PRE", "Z", "DH"}  # activation-dtype pointers
PTR_PARAM = {"Wt", "Bias", "Wc", "Bc", "W2", "B2"}  # parameter pointers (fp32 here; any float works)
PTR_ACC = {"PART", "R"}                 # accumulation-dtype pointers
DIVISIBLE = {"sx_n", "sx_l", "sy_n", "sy_l", "sdz_n", "sdz_l", "shtok_n", "shtok_l", "sdy_n", "sdy_l", "spre_n",
             "spre_l", "sz_n", "sz_l", "sdh_n", "sdh_l", "C", "Ca"}  # JIT sees these as multiples of 16
#: Optional pointers: the launchers pass None (a constexpr to the JIT) exactly when this holds.
ABSENT = {
    "Bias": lambda c: not c["HAS_BIAS"],
    "Bc": lambda c: not c["HAS_CB"],
    "B2": lambda c: not c["HAS_B2"],
    "R": lambda c: not c["HAS_R"],
    "PRE": lambda c: not (c.get("STORE_PRE") or c.get("LOAD_PRE")),
    "Z": lambda c: not c["STORE_Z"],
    "DZ": lambda c: not c.get("BWD", True),                                        # the prefix-act kernel
    "DP": lambda c: not c.get("STORE_DPRE", True) or c.get("PREFIX_ROWS", False),
    "PART": lambda c: c.get("PREFIX_ROWS", False),
    "DH": lambda c: not c.get("PREFIX_ROWS", False),
}
TY = {"fp16": "fp16", "bf16": "bf16", "fp32": "fp32", "fp64": "fp64"}
KERNELS = [(3, 1, 1), (3, 3, 3), (1, 3, 3), (5, 1, 1)]
#: max shared memory per block (opt-in) by arch: a config over it would fail at launch on that GPU
SMEM_LIMIT = {90: 232448, 80: 166912}


def _blk(d):
    return {k: v for k, v in d.items() if not k.startswith("num_")}


def compile_one(fn, io, consts, arch, num_warps=4):
    acc = "fp64" if io == "fp64" else "fp32"
    sig, attrs = {}, {}
    consts = dict(consts)
    for i, a in enumerate(fn.arg_names):
        if a in ABSENT and ABSENT[a](consts):
            consts[a] = None
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
                          target=GPUTarget("cuda", arch, 32), options=dict(num_warps=num_warps))


def variants():
    """(name, kernel, io dtype, constexprs, num_warps): every activation x dtype at (3,1,1), every kernel
    size, the transposed (FLIP) conv, the backwards with and without a stored dpre / a loaded
    pre-activation, at the first config of each GPU space; then every config of each autotuning space
    at the release's variant (bf16, (3,1,1), no activation)."""
    conv_fwd, conv_bwd = dwconv.conv_fwd_kernel.kernel, dwconv.conv_bwd_kernel.kernel
    onepass_fwd, onepass_bwd = onepass.onepass_fwd_kernel.kernel, onepass.onepass_bwd_kernel.kernel
    conv_space, fwd_space, bwd_space = (dwconv.conv_fwd_kernel.space, onepass.onepass_fwd_kernel.space,
                                        onepass.onepass_bwd_kernel.space)
    conv0, fwd0, bwd0 = conv_space[0], fwd_space[0], bwd_space[0]
    for C in (384, 20):
        blk = _blk(conv0)
        w = conv0["num_warps"]
        for io, (act_name, act) in itertools.product(("fp16", "bf16", "fp32"), ACTIVATIONS.items()):
            if C != 384 and act_name != "gelu":
                continue
            ks = dict(KT=3, KH=1, KW=1)
            yield f"fwd-{io}-{act_name}-C{C}", conv_fwd, io, dict(ks, FLIP=False, HAS_BIAS=True, ACT=act, **blk), w
            yield f"bwd-{io}-{act_name}-C{C}", conv_bwd, io, dict(ks, HAS_BIAS=True, ACT=act, STORE_DPRE=act != 0, **blk), w
        for io, kss in itertools.product(("fp16", "bf16", "fp32", "fp64"), KERNELS):
            ks = dict(KT=kss[0], KH=kss[1], KW=kss[2])
            tag = f"{io}-k{''.join(map(str, kss))}-C{C}"
            yield f"fwd-{tag}", conv_fwd, io, dict(ks, FLIP=False, HAS_BIAS=True, ACT=2, **blk), w
            yield f"flip-{tag}", conv_fwd, io, dict(ks, FLIP=True, HAS_BIAS=False, ACT=0, **blk), w
            yield f"bwd-{tag}", conv_bwd, io, dict(ks, HAS_BIAS=False, ACT=3, STORE_DPRE=True, **blk), w
    # the one-pass adapter tail, forward and fused backward (tensor-core dots for fp16/bf16, IEEE fp32/fp64)
    for io, act_name in itertools.product(("fp16", "bf16", "fp32", "fp64"), ("none", "gelu", "quick_gelu")):
        for kss in ((3, 1, 1), (3, 3, 3)):
            act = ACTIVATIONS[act_name]
            base = dict(KT=kss[0], KH=kss[1], KW=kss[2], HAS_CB=True, ACT=act, DOT_IEEE=io in ("fp32", "fp64"),
                        HAS_R=False, PREFIX_ROWS=False)
            tag = f"{io}-{act_name}-k{''.join(map(str, kss))}"
            yield (f"onepass-{tag}", onepass_fwd, io,
                   dict(base, HAS_B2=True, STORE_PRE=kss == (3, 3, 3), **_blk(fwd0)), fwd0["num_warps"])
            for load_pre in (False, True):
                if load_pre and act_name == "quick_gelu":
                    continue
                yield (f"onepass-bwd-{tag}-load_pre{int(load_pre)}", onepass_bwd, io,
                       dict(base, LOAD_PRE=load_pre, STORE_Z=not (load_pre and act == 0), **_blk(bwd0)),
                       bwd0["num_warps"])
    # mmaction2's variant: a per-clip output scale, and the prefix rows' launch (act + fc2, no conv)
    for io, prefix_rows in itertools.product(("fp16", "bf16", "fp32"), (False, True)):
        base = dict(KT=3, KH=3, KW=3, HAS_CB=True, ACT=ACTIVATIONS["relu"], DOT_IEEE=io == "fp32", HAS_R=True,
                    PREFIX_ROWS=prefix_rows)
        tag = f"{io}-prefix_rows{int(prefix_rows)}"
        yield f"onepass-mm2-{tag}", onepass_fwd, io, dict(base, HAS_B2=True, STORE_PRE=False, **_blk(fwd0)), fwd0["num_warps"]
        yield (f"onepass-bwd-mm2-{tag}", onepass_bwd, io,
               dict(base, LOAD_PRE=False, STORE_Z=True, **_blk(bwd0)), bwd0["num_warps"])
    pc = dwconv.PREFIX_CONFIG
    for io, bwd in itertools.product(("fp16", "bf16", "fp32", "fp64"), (False, True)):
        yield (f"prefix-act-{io}-bwd{int(bwd)}", dwconv.prefix_act_kernel, io,
               dict(ACT=ACTIVATIONS["gelu"], BWD=bwd, **_blk(pc)), pc["num_warps"])
    # every autotuning config, at the release's variant
    rel = dict(KT=3, KH=1, KW=1, ACT=0)
    for i, d in enumerate(conv_space):
        yield f"space-conv-fwd-{i}", conv_fwd, "bf16", dict(rel, FLIP=False, HAS_BIAS=True, **_blk(d)), d["num_warps"]
        yield f"space-conv-bwd-{i}", conv_bwd, "bf16", dict(rel, HAS_BIAS=True, STORE_DPRE=False, **_blk(d)), d["num_warps"]
    for i, d in enumerate(fwd_space):
        yield (f"space-onepass-fwd-{i}", onepass_fwd, "bf16",
               dict(rel, HAS_CB=True, HAS_B2=True, HAS_R=False, PREFIX_ROWS=False, DOT_IEEE=False, STORE_PRE=False,
                    **_blk(d)), d["num_warps"])
    for i, d in enumerate(bwd_space):
        yield (f"space-onepass-bwd-{i}", onepass_bwd, "bf16",
               dict(rel, HAS_CB=True, HAS_R=False, PREFIX_ROWS=False, DOT_IEEE=False, LOAD_PRE=False, STORE_Z=True,
                    **_blk(d)), d["num_warps"])


def main(archs):
    assert not INTERPRET, "run without TRITON_INTERPRET"
    n = 0
    for arch in archs:
        for name, fn, io, consts, warps in variants():
            t = time.time()
            ck = compile_one(fn, io, consts, arch, warps)
            ptx = ck.asm["ptx"]
            assert ".entry" in ptx and len(ck.asm["cubin"]) > 0, name
            assert ck.metadata.shared <= SMEM_LIMIT[arch], f"{name}: {ck.metadata.shared} B shared memory"
            print(f"sm_{arch} {name}: ok {time.time() - t:.2f}s shared={ck.metadata.shared} "
                  f"vector_loads={ptx.count('ld.global.v')} wgmma={'wgmma.mma_async' in ptx} "
                  f"mma_sync={'mma.sync' in ptx}", flush=True)
            n += 1
    print(f"{n} variants compiled for triton {triton.__version__}")


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [90, 80])
