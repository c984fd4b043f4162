"""Planted bugs: the differential test must catch each one within its normal budget.

A suite that cannot catch a planted bug is not evidence. At test time each
mutant copies bpf/natra.bpf.c and bpf/natra.h into a temporary directory,
applies one textual mutation (each search string must occur exactly once, so
this test breaks loudly when the source moves instead of silently testing an
unmutated program), builds it with the Makefile's own rule and flags (make -f
Makefile in the copy, so the flags cannot drift), checks that the kernel
loads it (a mutant the verifier refuses would prove nothing), and then runs
tests/kernel/test_differential.py's state machine against it with the same
example and step budget CI gives the real program, without shrinking
(Hypothesis stops at the first failing example). Hypothesis is derandomized
here, so the examples are the same on every run: a mutant caught once is
caught every time, and a change of the strategies that loses a catch fails
here.

The mutants: an off-by-one in the drain, the two hash seeds swapped on the
IPv4 path, the GSO charge left out, a wrong ECN mask, and in shaping mode a
heavy class slot that is never freed. Each kill is counted in the run's
summary line (tests/ci_tally.py).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import ci_tally
import netns
import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import run_state_machine_as_test

REPO = Path(__file__).resolve().parents[2]
SOURCES = ("natra.bpf.c", "natra.h")
CONTROL = "unmutated"
CONTROL_EXAMPLES = 12  # more than any mutant needs today; the full run is test_differential's


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str  # in bpf/
    search: str  # must occur exactly once
    replace: str
    why: str


MUTANTS = [
    Mutant("drain_off_by_one", "natra.bpf.c", "__u64 dt = now - *last;", "__u64 dt = now - *last - 1;",
           "drain() drains one nanosecond less than elapsed"),
    Mutant("hash_seeds_swapped", "natra.bpf.c",
           "*h1 = flow_hash(w, NATRA_HASH_SEED1);\n\t\t*h2 = flow_hash(w, NATRA_HASH_SEED2) | 1;",
           "*h1 = flow_hash(w, NATRA_HASH_SEED2);\n\t\t*h2 = flow_hash(w, NATRA_HASH_SEED1) | 1;",
           "the IPv4 fast path hashes with the seeds swapped"),
    Mutant("gso_charge_missing", "natra.bpf.c", "charge += (__u64)(segs - 1) * p.hdr_end;", "charge += 0;",
           "a GSO super-packet is charged skb->len only, its per-segment headers are forgotten"),
    Mutant("ecn_mask_wrong", "natra.bpf.c", "#define NATRA_ECN_MASK 0x03", "#define NATRA_ECN_MASK 0x01",
           "ECT(0) frames are not seen as ECN-capable, and marking sets only the low ECN bit"),
    Mutant("class_slot_never_freed", "natra.bpf.c", "live = epoch < slot->until_epoch;",
           "live = slot->until_epoch != 0;",
           "shaping: a heavy class stays owned after its flow stopped, so new heavy flows share"),
]


# make and clang build the mutants
SKIP_REASON = netns.kernel_skip_reason(node_bpffs=True, objects=netns.ALL_OBJECTS, tools=("make", "clang"))


def needs_kernel(test):
    return pytest.mark.root(pytest.mark.skipif(SKIP_REASON is not None, reason=str(SKIP_REASON))(test))


def mutate(text: str, mutant: Mutant) -> str:
    count = text.count(mutant.search)
    assert count == 1, (f"mutant {mutant.name}: {mutant.search!r} occurs {count} times in bpf/{mutant.file} "
                        "(the source moved: update the mutation)")
    return text.replace(mutant.search, mutant.replace)


def build(mutant: Mutant | None, workdir: Path) -> Path:
    """The mutant's object (None: the unmutated source), built by the Makefile's own rule
    in a copy of bpf/."""
    (workdir / "bpf").mkdir(parents=True)
    for name in SOURCES:
        text = (REPO / "bpf" / name).read_text()
        if mutant is not None and name == mutant.file:
            text = mutate(text, mutant)
        (workdir / "bpf" / name).write_text(text)
    done = subprocess.run(["make", "-s", "-f", str(REPO / "Makefile"), "OUT=out", "out/natra.bpf.o"],
                          cwd=workdir, capture_output=True, text=True)
    assert done.returncode == 0, f"mutant {mutant and mutant.name} does not build:\n{done.stderr[-2000:]}"
    return workdir / "out" / "natra.bpf.o"


@pytest.fixture(scope="module")
def mutant_objects():
    """Every mutant built once (in parallel), removed at the end."""
    with tempfile.TemporaryDirectory(prefix="natra-mutants-") as tmp:
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            paths = list(pool.map(lambda m: build(m, Path(tmp) / (m.name if m else CONTROL)),
                                  [None, *MUTANTS]))
        yield dict(zip([CONTROL, *(m.name for m in MUTANTS)], paths, strict=True))


def test_mutations_apply_to_the_source_exactly_once():
    for mutant in MUTANTS:
        mutated = mutate((REPO / "bpf" / mutant.file).read_text(), mutant)
        assert mutated != (REPO / "bpf" / mutant.file).read_text()


def budget(max_examples: int):
    import test_differential as D

    return settings(
        max_examples=max_examples, stateful_step_count=D.STEP_COUNT, deadline=None,
        phases=[Phase.generate], derandomize=True, database=None, report_multiple_bugs=False,
        suppress_health_check=list(HealthCheck), print_blob=False,
    )


@needs_kernel
def test_control_the_same_build_unmutated_passes(kernel, mutant_objects):
    """The build in a copy and the derandomized examples are sound: unmutated, they pass."""
    import test_differential as D

    machine = D.machine_for(str(mutant_objects[CONTROL]))
    run_state_machine_as_test(machine, settings=budget(CONTROL_EXAMPLES))
    assert machine.examples_run == CONTROL_EXAMPLES


@needs_kernel
@pytest.mark.parametrize("mutant", MUTANTS, ids=[m.name for m in MUTANTS])
def test_differential_suite_kills_the_mutant(kernel, mutant_objects, mutant):
    import test_differential as D

    from natra.kernel.loader import BpfObject
    from natra.kernel.params import to_config

    path = str(mutant_objects[mutant.name])
    # It must load: a mutant the verifier refuses proves nothing about the comparison.
    BpfObject.load([to_config(None), to_config(None)], flow_table=16, path=path).close()
    ci_tally.add(ci_tally.MUTANTS_PLANTED)

    machine = D.machine_for(path)
    start = time.monotonic()
    with pytest.raises(AssertionError) as caught:
        run_state_machine_as_test(machine, settings=budget(D.MAX_EXAMPLES))
    ci_tally.add(ci_tally.MUTANTS_KILLED)
    first = str(caught.value).splitlines()[0] if str(caught.value) else type(caught.value).__name__
    print(f"\nmutant {mutant.name} ({mutant.why}) killed in example {machine.examples_run} "
          f"in {time.monotonic() - start:.1f} s: {first[:160]}")
