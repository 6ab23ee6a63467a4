"""The scaling report's reading of compiled programs (bench/scaling.py): collective kinds,
groups, bytes per device, and the element types the CPU backend promotes."""

import pytest

from deep_image.bench import scaling

HLO = """
  %all_gather.1 = f32[1,1024]{1,0} all-gather(%p.1), channel_id=1, replica_groups={{0,1,2,3,4,5,6,7}}, dimensions={1}, use_global_device_ids=true, metadata={op_name="jit(local)/shard_map/lazy_gather/all_gather"}
  %reduce_scatter.2 = f32[128]{0} reduce-scatter(%f.2), channel_id=2, replica_groups={{0,4},{1,5},{2,6},{3,7}}, use_global_device_ids=true, dimensions={0}, to_apply=%add, metadata={op_name="jit(local)/shard_map/butterfly_sync/reduce_scatter"}
  %psum.3 = f32[16,256]{1,0} all-reduce(%d.3), channel_id=3, replica_groups=[2,4]<=[8], use_global_device_ids=true, to_apply=%add_promoted, metadata={op_name="jit(local)/shard_map/jvp()/psum_invariant"}
  %add.4 = f32[16,256]{1,0} add(%a, %b)
"""


def test_collectives_kinds_groups_and_ring_bytes():
    ops = scaling.collectives(HLO, 8, node_size=4)
    assert [(o["kind"], o["scope"], o["group"], o["intra_node"]) for o in ops] == [
        ("all-gather", "lazy_gather", 8, False),
        ("reduce-scatter", "butterfly_sync", 2, False),     # devices 0 and 4: two nodes
        ("all-reduce", "activations", 4, True)]             # iota groups {0..3}, {4..7}
    gather, scatter, reduce = ops
    assert gather["payload_bytes"] == 4096 and gather["ring_bytes"] == pytest.approx(4096 * 7 / 8)
    # a reduce-scatter's payload is its input: group x the part it returns
    assert scatter["payload_bytes"] == 2 * 128 * 4 and scatter["ring_bytes"] == 512
    assert reduce["ring_bytes"] == pytest.approx(2 * 3 / 4 * 16 * 256 * 4)


def test_bfloat16_collectives_count_at_the_type_jax_emitted():
    lowered = ('%5 = "stablehlo.all_reduce"(%4) <{replica_groups = dense<0> : tensor<1x1xi64>}> '
               '({\n^bb0(%a: tensor<bf16>, %b: tensor<bf16>):\n  %s = stablehlo.add %a, %b : '
               'tensor<bf16>\n  stablehlo.return %s : tensor<bf16>\n}) : (tensor<16x256xbf16>) '
               '-> tensor<16x256xbf16>')
    emitted = scaling.lowered_types(lowered)
    assert emitted == {("all-reduce", (16, 256)): "bf16"}
    reduce = scaling.collectives(HLO, 8, emitted, node_size=4)[2]
    assert reduce["payload_bytes"] == 16 * 256 * 2
