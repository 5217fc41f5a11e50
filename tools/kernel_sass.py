"""SASS gate of the W1A4 kernels: how many instructions a warp issues per tensor-core MAC, from the CPU.

Compiles every ``cuda/*.cu`` with nvcc to a cubin per architecture (default sm_90a and sm_80), reads
ptxas's resource report (registers, shared memory, stack, spills) and the disassembly (cuobjdump
-sass), and finds in each kernel the steady-state main loop: the innermost loop (a backward branch
and the code it jumps back over) that holds tensor-core instructions. For that loop body it counts
the instructions on the longest path from its head to its back edge (forward branches followed both
ways, the warp that does the most work: the others wait for it at the step's barrier), and the
multiply-accumulates of the tensor-core instructions on the body, per warp (a warpgroup MMA's are
shared by its 4 warps). The figure

    instr_per_4k_mac = longest-path instructions / (MACs per warp / 4096)

is instructions per warp per m16n8k32's worth of MACs (issue 15: a CUTLASS-class kernel spends a few;
> ~4 leaves the tensor cores idle). The shortest path and the static body length are reported too.
For the GroupNorm statistics kernels (``w1a4_gn_partial_*``, no tensor cores) it reports their streaming loop
instead: instructions on its longest path per global load (one element each), ``instr_per_load``.
MACs are those of the W1A4 product (1-bit weight x 4-bit activation): an 8- or 4-bit MMA's MAC is one,
while a 1-bit MMA (BMMA/BGMMA ... AND.POPC) makes bit products, and a W1A4 MAC takes 4 of them (one per
bit-plane of the codes): one m16n8k256 b1 MMA is 16 * 8 * 256 / 4 = 8,192 W1A4 MACs, so the 4 plane
MMAs of one 16 x 8 tile over 256 channels are 16 * 8 * 256. The W1A1 kernels (``w1a1_*``) multiply 1-bit
activations on 2 planes (the sign and the inside-the-image mask), so their MAC is 2 bit products and their
figure is per 4k W1A1 MACs. ``bit_macs_per_warp`` keeps the raw count.

    python tools/kernel_sass.py [--arch sm_90a sm_80] [--json FILE] [--keep DIR]

Prints one line per kernel, then the worst conv kernel and its figure on the last line.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from binarydm.resources import cuda_dir

CUDA_DIR = cuda_dir()
MACS_REF = 4096  # one mma.m16n8k32

_INSTR = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
_PRED = re.compile(r"^@!?U?P[T0-9]+\s+")
_MMA = re.compile(r"^([HIBQD]?MMA)\.(\d+)")
_GMMA = re.compile(r"^([HIBQ]GMMA)\.(\d+)x(\d+)x(\d+)")


def find_tool(name: str) -> str | None:
    """``name`` from PATH, the CUDA toolkit, or the copy in Triton's wheel (cuobjdump, nvdisasm)."""
    found = shutil.which(name)
    if found:
        return found
    for base in (Path("/usr/local/cuda/bin"),):
        if (base / name).exists():
            return str(base / name)
    try:
        import triton

        path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
        return str(path) if path.exists() else None
    except ImportError:
        return None


def compile_cubin(source: Path, arch: str, out_dir: Path) -> tuple[Path, str]:
    """nvcc -cubin for ``arch`` (sm_90a needs the -gencode form); returns (cubin, ptxas -v report)."""
    number = arch.removeprefix("sm_")
    cubin = out_dir / f"{source.stem}.{arch}.cubin"
    cmd = ["nvcc", "-cubin", "-O3", "-std=c++17", f"-gencode=arch=compute_{number},code=sm_{number}",
           "-Xptxas", "-v", "-o", str(cubin), str(source)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"nvcc failed for {source.name} ({arch}):\n{result.stderr}")
    return cubin, result.stderr


def parse_ptxas(report: str) -> dict[str, dict]:
    """{kernel: {registers, shared_bytes, stack_bytes, spill_stores, spill_loads}} from ptxas -v."""
    out: dict[str, dict] = {}
    current = None
    for line in report.splitlines():
        m = re.search(r"(?:Compiling entry function|Function properties for) '?([\w$]+)'?", line)
        if m:
            current = out.setdefault(m.group(1), {"registers": None, "shared_bytes": 0, "stack_bytes": 0,
                                                   "spill_stores": 0, "spill_loads": 0})
            continue
        if current is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            current.update(stack_bytes=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
        m = re.search(r"Used (\d+) registers", line)
        if m:
            current["registers"] = int(m.group(1))
            s = re.search(r"(\d+) bytes smem", line)
            current["shared_bytes"] = int(s.group(1)) if s else 0
    return out


def parse_sass(text: str) -> dict[str, list[tuple[int, str]]]:
    """{kernel: [(address, instruction text without the ';')]} from cuobjdump -sass."""
    kernels: dict[str, list] = {}
    current = None
    for line in text.splitlines():
        m = re.search(r"Function : (\S+)", line)
        if m:
            current = kernels.setdefault(m.group(1), [])
            continue
        m = _INSTR.match(line)
        if m and current is not None:
            current.append((int(m.group(1), 16), m.group(2)))
    return kernels


def opcode(instr: str) -> str:
    return _PRED.sub("", instr).split()[0]


def mma_macs(instr: str) -> int:
    """MACs per warp of one tensor-core instruction (0 for anything else)."""
    op = opcode(instr)
    m = _GMMA.match(op)
    if m:  # a warpgroup instruction: its m x n x k is shared by 4 warps
        return int(m.group(2)) * int(m.group(3)) * int(m.group(4)) // 4
    m = _MMA.match(op)
    if m:
        shape = m.group(2)  # m n k run together: 16832 = 16 8 32, 8816 = 8 8 16, 168256 = 16 8 256
        mm = 16 if shape.startswith("16") else 8
        rest = shape[len(str(mm)):]
        return mm * int(rest[0]) * int(rest[1:])
    return 0


def w1a4_macs(instr: str, planes: int = 4) -> int:
    """W1A4 MACs per warp of one tensor-core instruction: a 1-bit MMA's bit products / 4 (4 bit-planes);
    ``planes=2``: W1A1 MACs of the 2-plane kernel."""
    macs = mma_macs(instr)
    return macs // planes if opcode(instr).startswith(("BMMA", "BGMMA")) else macs


def planes_of(kernel: str) -> int:
    """Bit-planes per activation of a kernel: 2 for the W1A1 kernels, else 4."""
    return 2 if kernel.startswith("w1a1") else 4


def branch_target(instr: str) -> int | None:
    body = _PRED.sub("", instr)
    if not body.startswith("BRA"):
        return None
    m = re.search(r"0x([0-9a-f]+)\s*$", body)
    return int(m.group(1), 16) if m else None


def is_conditional(instr: str) -> bool:
    return bool(_PRED.match(instr)) and not instr.startswith("@PT ")


def main_loop(code: list[tuple[int, str]], planes: int = 4) -> dict | None:
    """The innermost loop holding tensor-core instructions, with its path lengths and MACs per warp
    (a 1-bit MMA's bit products over ``planes``)."""
    loop = innermost_loop(code, mma_macs)
    return None if loop is None else loop_figures(code, *loop, planes)


def innermost_loop(code: list[tuple[int, str]], holds) -> tuple[int, int] | None:
    """(head, back edge) indices of the shortest loop whose body has an instruction with ``holds(instr)``."""
    index = {addr: i for i, (addr, _) in enumerate(code)}
    loops = []
    for i, (addr, instr) in enumerate(code):
        target = branch_target(instr)
        if target is not None and target <= addr and target in index:
            lo, hi = index[target], i
            if any(holds(code[j][1]) for j in range(lo, hi + 1)):
                loops.append((hi - lo, lo, hi))
    return min(loops)[1:] if loops else None


def is_global_load(instr: str) -> bool:
    return opcode(instr).startswith("LDG")


def load_loop(code: list[tuple[int, str]]) -> dict | None:
    """The innermost loop holding global loads (a streaming kernel's main loop, e.g. the GroupNorm
    statistics): instructions on its longest path per global load on it (one element per load there)."""
    loop = innermost_loop(code, is_global_load)
    if loop is None:
        return None
    figures = loop_figures(code, *loop, count=lambda instr: int(is_global_load(instr)))
    loads = figures["macs_per_warp"]
    return dict(start=figures["start"], end=figures["end"], longest_path=figures["longest_path"], loads=loads,
                instr_per_load=round(figures["longest_path"] / loads, 2) if loads else None)


def loop_figures(code: list[tuple[int, str]], lo: int, hi: int, planes: int = 4, count=None) -> dict:
    """Path lengths of the loop code[lo..hi] and what ``count(instr)`` adds up along its longest path
    (default: the W1A4 MACs of its tensor-core instructions, reported as ``macs_per_warp``)."""
    index = {addr: i for i, (addr, _) in enumerate(code)}
    count = count or (lambda instr: w1a4_macs(instr, planes))
    # Longest and shortest instruction counts from the head (lo) to the back edge (hi) through the body,
    # as a DAG: forward branches inside the body are followed both ways; other backward branches (inner
    # loops without MMA) are not taken; branches out of the body or EXIT end a path (it leaves the loop).
    longest: dict[int, float] = {}
    shortest: dict[int, float] = {}
    macs_long: dict[int, int] = {}
    for j in range(hi, lo - 1, -1):
        instr = code[j][1]
        op = opcode(instr)
        cost = 0 if op == "NOP" else 1
        if j == hi:
            longest[j], shortest[j], macs_long[j] = cost, cost, count(instr)
            continue
        nexts = []
        target = branch_target(instr)
        exits = op in ("EXIT", "RET")
        if target is not None and index.get(target, -1) > j and index[target] <= hi:
            nexts.append(index[target])
        if (target is None and not exits) or is_conditional(instr):
            nexts.append(j + 1)
        nexts = [n for n in nexts if n in longest and longest[n] != float("-inf")]
        if not nexts:
            longest[j], shortest[j], macs_long[j] = float("-inf"), float("inf"), 0
            continue
        best = max(nexts, key=lambda n: longest[n])
        longest[j] = cost + longest[best]
        macs_long[j] = count(instr) + macs_long[best]
        shortest[j] = cost + min(shortest[n] for n in nexts)
    static_macs = sum(count(code[j][1]) for j in range(lo, hi + 1))
    bit_macs = sum(mma_macs(code[j][1]) for j in range(lo, hi + 1))
    mma_ops: dict[str, int] = {}
    for j in range(lo, hi + 1):
        if mma_macs(code[j][1]):
            op = opcode(code[j][1])
            mma_ops[op] = mma_ops.get(op, 0) + 1
    return dict(start=hex(code[lo][0]), end=hex(code[hi][0]), static_instr=hi - lo + 1,
                longest_path=int(longest[lo]), shortest_path=int(shortest[lo]),
                macs_per_warp=macs_long[lo] or static_macs, bit_macs_per_warp=bit_macs, mma=mma_ops)


def analyse(arch_list, keep: Path | None = None) -> list[dict]:
    cuobjdump = find_tool("cuobjdump")
    if shutil.which("nvcc") is None or cuobjdump is None:
        raise SystemExit("kernel_sass: needs nvcc and cuobjdump (PATH, /usr/local/cuda/bin or Triton's wheel)")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = keep or Path(tmp)
        out_dir.mkdir(parents=True, exist_ok=True)
        for source in sorted(CUDA_DIR.glob("*.cu")):
            for arch in arch_list:
                cubin, report = compile_cubin(source, arch, out_dir)
                resources = parse_ptxas(report)
                sass = subprocess.run([cuobjdump, "-sass", str(cubin)], capture_output=True, text=True,
                                      check=True).stdout
                if keep:
                    (out_dir / f"{cubin.stem}.sass").write_text(sass)
                for name, code in sorted(parse_sass(sass).items()):
                    loop = main_loop(code, planes_of(name))
                    row = dict(source=source.name, arch=arch, kernel=name, **resources.get(name, {}),
                               instructions=len(code), main_loop=loop, instr_per_4k_mac=None)
                    if loop and loop["macs_per_warp"]:
                        per = MACS_REF / loop["macs_per_warp"]
                        row["instr_per_4k_mac"] = round(loop["longest_path"] * per, 2)
                        row["instr_per_4k_mac_shortest"] = round(loop["shortest_path"] * per, 2)
                        row["instr_per_4k_mac_static"] = round(loop["static_instr"] * per, 2)
                    if name.startswith("w1a4_gn_partial"):  # the GroupNorm statistics: a streaming loop
                        row["load_loop"] = load_loop(code)
                    rows.append(row)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", nargs="+", default=["sm_90a", "sm_80"])
    parser.add_argument("--json", type=Path, default=None, help="write the per-kernel figures here")
    parser.add_argument("--keep", type=Path, default=None, help="keep the cubins and SASS listings here")
    args = parser.parse_args(argv)
    rows = analyse(args.arch, args.keep)
    for r in rows:
        loop = r["main_loop"]
        unit = "W1A1" if planes_of(r["kernel"]) == 2 else "W1A4"
        loop_text = (f"main loop {loop['start']}..{loop['end']}: {loop['longest_path']} instr (longest path), "
                     f"{loop['macs_per_warp']} {unit} MAC/warp {loop['mma']} -> {r['instr_per_4k_mac']} instr "
                     "per 4k MAC"
                     if loop else "no tensor-core loop")
        if r.get("load_loop"):
            ld = r["load_loop"]
            loop_text += (f"; load loop {ld['start']}..{ld['end']}: {ld['longest_path']} instr, {ld['loads']} "
                          f"loads -> {ld['instr_per_load']} instr per element")
        print(f"{r['arch']:7s} {r['kernel']:28s} regs {r.get('registers')}, smem {r.get('shared_bytes')} B, "
              f"spills {r.get('spill_stores', 0) + r.get('spill_loads', 0)} B; {loop_text}")
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1))
    conv = [r for r in rows if "conv" in r["kernel"] and r["instr_per_4k_mac"] is not None]
    if not conv:
        print("worst conv kernel: none has a tensor-core main loop")
        return 1
    worst = max(conv, key=lambda r: r["instr_per_4k_mac"])
    print(f"worst conv kernel: {worst['kernel']} ({worst['arch']}) instr_per_4k_mac = {worst['instr_per_4k_mac']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
