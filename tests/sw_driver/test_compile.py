"""sw_driver.compile: memory image layout, register program and input validation.

Bit-exactness of the image is checked by running it on the RTL
(tests/accelerator/test_top.py, tests/accelerator/test_top_fast.py); these tests cover the
layout rules and the errors raised before any simulation.
"""

import dataclasses
import itertools
from pathlib import Path

import numpy as np
import pytest

from contract import layout
from contract.descriptor import weights_code
from contract.regs import REGISTER_MAP
from pymodel.config import AccelConfig, ConfigError
from pymodel.families import family_spec
from pymodel.layer import golden_layer, quantize_input
from pymodel.numerics import NumericsError
from pymodel.quantize import calibrate, quantize_layer
from pymodel.synthetic import synthetic_layer, synthetic_tokens
from pymodel.weight_formats import WeightFormat
from pymodel.weights import MoEWeights
from sim.tb.layer_cases import SMALL_TOP, make_case, mode_specs
from sw_driver.compile import compile_layer, read_outputs, unmapped_addr

SPECS = mode_specs(24, 40, 8)


def layout_root() -> Path:
    """The checkout (configs/ lives there)."""
    return Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("mode", ["mixtral", "qwen2_moe", "deepseek_v3", "switch"])
def test_regions_are_aligned_disjoint_and_inside_the_image(mode):
    case = make_case(mode, SPECS[mode], SMALL_TOP, tokens=5, seed=1)
    img = case.image
    spans = sorted((r.addr, r.addr + r.size) for r in img.regions.values())
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end
    assert all(r.addr % layout.REGION_ALIGN == 0 for r in img.regions.values())
    assert spans[-1][1] <= img.mem_bytes and img.mem_bytes % 4096 == 0
    assert ("expert_table" in img.regions) and ("shared.w1" in img.regions) == (
        SPECS[mode].has_shared
    )


def test_register_program_names_real_registers_and_ends_with_start():
    case = make_case("m", SPECS["mixtral"], SMALL_TOP, tokens=3, seed=2)
    names = [name for name, _ in case.image.program]
    assert all(name in REGISTER_MAP for name in names)
    assert case.image.program[-1] == ("CTRL", REGISTER_MAP["CTRL"].register.pack(start=1))
    values = dict(case.image.program)
    assert values["NUM_TOKENS"] == 3 and values["TOP_K"] == 2 and values["N_EXPERTS"] == 8


def test_tokens_and_expert_streams_are_laid_out_as_the_engine_reads_them():
    cfg = SMALL_TOP
    case = make_case("m", SPECS["softmax_gelu_k3"], cfg, tokens=4, seed=3)
    img, ql = case.image, case.ql
    stride = layout.row_bytes(cfg, 24)
    tok = img.regions["tokens"]
    rows = img.mem[tok.addr : tok.addr + 4 * stride].view(np.int8).reshape(4, stride)
    np.testing.assert_array_equal(rows[:, :24], case.x_q)
    assert not rows[:, 24:].any()
    w1 = img.regions["expert2.w1"]
    stream = img.mem[w1.addr : w1.addr + w1.size].view(np.int8)
    # N-tile 0 (channels 0..7), row k holds W1[k, 0:8]; then tile 1 starts at row 24.
    np.testing.assert_array_equal(stream[:8], ql.experts.w1_q[2][0, :8])
    np.testing.assert_array_equal(stream[8 * 24 : 8 * 25], ql.experts.w1_q[2][0, 8:16])


def test_bad_inputs_raise_before_any_simulation():
    case = make_case("m", SPECS["mixtral"], SMALL_TOP, tokens=4, seed=4)
    with pytest.raises(NumericsError, match="x_q"):
        compile_layer(case.ql, case.x_q.astype(np.float32), SMALL_TOP)
    with pytest.raises(NumericsError, match="x_q"):
        compile_layer(case.ql, case.x_q * 4, SMALL_TOP)
    with pytest.raises(ConfigError, match="shape"):
        compile_layer(case.ql, case.x_q[:, :5], SMALL_TOP)
    with pytest.raises(ConfigError, match="max_tokens"):
        compile_layer(case.ql, np.zeros((17, 24), np.int64), SMALL_TOP)
    with pytest.raises(ConfigError, match="logit_bits"):
        compile_layer(case.ql, case.x_q, SMALL_TOP.replace(logit_bits=12))
    with pytest.raises(ConfigError, match="power of two"):
        compile_layer(case.ql, case.x_q, SMALL_TOP.replace(rows=6))
    with pytest.raises(ConfigError, match="base"):
        compile_layer(case.ql, case.x_q, SMALL_TOP, base=100)
    with pytest.raises(ConfigError, match="watchdog"):
        compile_layer(case.ql, case.x_q, SMALL_TOP, watchdog_cycles=-1)
    with pytest.raises(ConfigError, match="uint8"):
        read_outputs(np.zeros(10, np.int8), case.image)
    with pytest.raises(ConfigError, match="does not hold"):
        read_outputs(np.zeros(64, np.uint8), case.image)


def test_resident_experts_are_the_only_ones_written() -> None:
    case = make_case("m", SPECS["mixtral"], SMALL_TOP, tokens=3, seed=5)
    some = compile_layer(case.ql, case.x_q, SMALL_TOP, resident_experts=[6, 1])
    assert some.resident == (1, 6) and case.image.resident == tuple(range(8))
    assert {"expert1.w1", "expert6.params"} <= set(some.regions)
    assert "expert0.w1" not in some.regions
    assert some.written_bytes < case.image.written_bytes
    table = some.regions["expert_table"].addr
    desc = some.mem[table : table + 8 * layout.desc_bytes(SMALL_TOP)].view("<u4")
    stride = layout.desc_bytes(SMALL_TOP) // 4
    nowhere = unmapped_addr(SMALL_TOP)
    assert desc[0] == nowhere and desc[2] == nowhere and desc[4] == nowhere
    assert desc[stride] == some.regions["expert1.w1"].addr
    # the resident experts' bytes are the ones a full image holds at its own addresses
    for part in ("w1", "w2", "params"):
        a, b = some.regions[f"expert6.{part}"], case.image.regions[f"expert6.{part}"]
        assert np.array_equal(
            some.mem[a.addr : a.addr + a.size], case.image.mem[b.addr : b.addr + b.size]
        )
    mem = np.zeros(some.mem_bytes, np.uint8)
    some.write_into(mem)
    assert np.array_equal(mem, some.mem)
    with pytest.raises(ConfigError, match="resident_experts holds 8"):
        compile_layer(case.ql, case.x_q, SMALL_TOP, resident_experts=[8])
    with pytest.raises(ConfigError, match="collection of ints"):
        compile_layer(case.ql, case.x_q, SMALL_TOP, resident_experts=3)
    with pytest.raises(ConfigError, match="does not hold"):
        some.write_into(np.zeros(64, np.uint8))


def test_a_full_size_layer_compiles_without_generating_weights_and_fits_40_bits() -> None:
    cfg = AccelConfig.from_json((layout_root() / "configs" / "fullsize.json").read_text())
    spec = family_spec(
        "deepseek_v3", d_model=7168, d_ff=2048, n_experts=256, top_k=8, n_group=8, topk_group=4
    )
    narrow = cfg.replace(addr_bits=32)
    ql = synthetic_layer(spec, narrow, seed=1)
    x_q = synthetic_tokens(spec, narrow, 1, seed=1)
    with pytest.raises(ConfigError, match="32-bit bus: region 'expert"):
        compile_layer(ql, x_q, narrow)
    image = compile_layer(ql, x_q, narrow, resident_experts=range(8))
    expert = 3 * 7168 * 2048
    assert 9 * expert < image.written_bytes < 9 * expert + 2**22  # + router, tables
    assert image.mem_bytes < 10 * expert + 2**24
    whole = compile_layer(ql, x_q, cfg)  # 40 bits: every expert at its real address
    assert whole.resident == tuple(range(256)) and whole.mem_bytes > 257 * expert
    last = whole.regions["expert255.w2"]
    assert last.addr > 2**32 and last.addr % layout.region_align(cfg) == 0
    at = whole.regions["expert_table"].addr + 255 * layout.desc_bytes(cfg)
    chunk = next(c for c in whole.chunks if c.addr == at)
    assert chunk.region == "expert_table" and not chunk.lazy  # descriptors are eager
    words = chunk.produce()[: layout.EXPERT_DESCRIPTOR.itemsize].view(layout.EXPERT_DESCRIPTOR)
    assert int(words["w2_addr"][0]) << layout.addr_shift(cfg) == last.addr
    lazy = {c.region.partition(".")[2] for c in whole.chunks if c.lazy}
    assert lazy == {"w1", "w2", "params"}
    assert sum(c.lazy for c in whole.chunks) == 3 * 257


def test_memory_mapped_expert_weights_compile_and_compute_like_generated_ones(tmp_path) -> None:
    spec = family_spec("mixtral", d_model=24, d_ff=40, n_experts=4)
    ql = synthetic_layer(spec, SMALL_TOP, seed=3)
    x_q = synthetic_tokens(spec, SMALL_TOP, 2, seed=3)
    mapped = {}
    for name in ("w1_q", "w3_q", "w2_q"):
        lazy = getattr(ql.experts, name)
        path = tmp_path / f"{name}.npy"
        out = np.lib.format.open_memmap(path, mode="w+", dtype=np.int8, shape=lazy.shape)
        for e in range(len(lazy)):
            out[e] = lazy[e]
        out.flush()
        mapped[name] = np.load(path, mmap_mode="r")
    on_file = dataclasses.replace(ql, experts=dataclasses.replace(ql.experts, **mapped))
    assert np.array_equal(
        compile_layer(on_file, x_q, SMALL_TOP).mem, compile_layer(ql, x_q, SMALL_TOP).mem
    )
    expected = golden_layer(ql, x_q, SMALL_TOP).y_q
    assert np.array_equal(golden_layer(on_file, x_q, SMALL_TOP).y_q, expected)


@pytest.mark.parametrize(
    ("fmt", "cfg_switches", "message"),
    [
        (WeightFormat(bits=4), {}, "int4_weights = True"),
        (WeightFormat(sparse=True), {"int4_weights": True}, "sparse_2_4 = True"),
        (WeightFormat(bits=4, group_size=32), {"int4_weights": True}, "one scale per output"),
    ],
)
def test_compressed_layers_are_refused_by_the_image(fmt, cfg_switches, message) -> None:
    """A format the build lacks (or group-wise int4) never reaches the hardware."""
    cfg = SMALL_TOP.replace(**cfg_switches)
    spec = family_spec("mixtral", d_model=32, d_ff=64, n_experts=8)
    weights = MoEWeights.random(spec, seed=2)
    x = np.random.default_rng(2).standard_normal((4, spec.d_model)).astype(np.float32)
    ql = quantize_layer(spec, weights, calibrate(spec, weights, x, fmt), cfg, fmt)
    with pytest.raises(ConfigError, match=message):
        compile_layer(ql, quantize_input(ql, x), cfg)


@pytest.mark.parametrize("weights, sparsity", [("int8", "2:4"), ("int4", "dense"), ("int4", "2:4")])
def test_a_compressed_layer_image_holds_the_compressed_streams(weights, sparsity) -> None:
    """Each routed and shared expert's streams are `layout.weight_stream` in the layer's
    format, the expert table's row counts theirs, and LAYER_MODE.weights names it."""
    cfg = SMALL_TOP.replace(sparse_2_4=True, int4_weights=True)
    fmt = WeightFormat.parse(weights, sparsity)
    spec = family_spec("qwen2_moe", d_model=32, d_ff=16, n_experts=4)
    weights_f = MoEWeights.random(spec, seed=3)
    x = np.random.default_rng(3).standard_normal((4, spec.d_model)).astype(np.float32)
    ql = quantize_layer(spec, weights_f, calibrate(spec, weights_f, x, fmt), cfg, fmt)
    image = compile_layer(ql, quantize_input(ql, x), cfg)
    mem = image.mem
    table = image.regions["expert_table"].addr - image.base
    for i, (name, p, e) in enumerate(
        [*((f"expert{j}", ql.experts, j) for j in range(spec.n_experts)), ("shared", ql.shared, 0)]
    ):
        words = np.frombuffer(
            mem[table + i * layout.desc_bytes(cfg) :][: layout.EXPERT_DESCRIPTOR.itemsize],
            layout.EXPERT_DESCRIPTOR,
        )[0]
        for part, mats, idx in (
            ("w1", [p.w1_q[e], p.w3_q[e]], [p.w1_idx, p.w3_idx]),
            ("w2", [p.w2_q[e]], [p.w2_idx]),
        ):
            positions = [j[e] for j in idx] if fmt.sparse else None
            stream = layout.weight_stream(cfg, mats, fmt, positions).astype(np.int8)
            k, n = mats[0].shape
            assert (
                int(words[f"{part}_rows"])
                == layout.weight_stream_rows(cfg, k, n, len(mats), fmt)
                == len(stream)
            ), (name, part)
            at = image.regions[f"{name}.{part}"].addr - image.base
            assert np.array_equal(mem[at : at + stream.size].view(np.int8), stream.reshape(-1))
    mode = REGISTER_MAP["LAYER_MODE"].register.unpack(dict(image.program)["LAYER_MODE"])
    assert mode["weights"] == weights_code(fmt)
