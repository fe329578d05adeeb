"""voxgraph on a real two-node Ray cluster on loopback.

`ray start` a head and a worker (127.0.0.1, one logical GPU each, private temp dir,
free ports), `serve deploy` a config derived from serve_config.yaml with the tiny
models, then: replicas on both nodes, autoscaling up under a burst and back down,
an in-place user_config update under load with no failed request, every deployment
healthy in `serve status`. The scenario lives in scripts/cluster_smoke.py (also
runnable by hand); this test runs it and checks its report. It stops only the
processes it started.
"""

from __future__ import annotations

import json

import pytest

from tests.support import load_script

pytestmark = [pytest.mark.integration, pytest.mark.cluster]


def _cluster_smoke():
    return load_script("cluster_smoke")


@pytest.mark.timeout(1200)
def test_two_node_cluster(tiny_models, tmp_path):
    smoke = _cluster_smoke()
    report = smoke.run(tmp_path)
    print(smoke.summary(report))
    print(json.dumps({k: report[k] for k in ("scale_up", "burst") if k in report}, default=str))

    # Two nodes on loopback, each with one logical GPU.
    assert len(report["nodes"]) == 2, report["nodes"]
    assert all(n["ip"] == "127.0.0.1" for n in report["nodes"].values()), report["nodes"]
    assert not report["non_loopback_sockets"], report["non_loopback_sockets"]

    # Replicas of the model deployments on both nodes (forced at peak: one GPU per
    # node cannot hold 0.4 + 0.3 + 0.2 plus a second replica of any of them).
    peak_nodes = {nid for name in smoke.MODELS for nid in report["peak_placement"][name]}
    assert peak_nodes == set(report["nodes"]), report["peak_placement"]

    # Autoscaling: past one replica under the burst, back to one after it.
    assert max(report["scale_up"]["replicas_at_peak"].values()) >= 2, report["scale_up"]
    assert report["scale_down_s"] > 0

    # In-place user_config update under load: new batch sizes, same replicas, no failure.
    update = report["update"]
    assert update["requests"] > 0 and update["failed"] == 0, update
    assert all(old != new for old, new in update["max_batch_size"].values()), update
    assert update["replicas_unchanged"] and not update["replicas_died"], update

    assert report["final_status"]["healthy"], report["final_status"]
    smoke.verify(report)  # the same checks the script applies, plus the burst's failures
