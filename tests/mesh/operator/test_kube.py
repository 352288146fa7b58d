"""What the operator writes when it applies an object: only what differs from the live one."""

from __future__ import annotations

from mesh.operator.kube import _difference, object_path

WANTED = {"metadata": {"name": "d", "labels": {"a": "1"}},
          "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "c", "image": "img:1"}]}}}}


def test_fields_the_api_server_adds_are_no_difference():
    live = {"metadata": {"name": "d", "labels": {"a": "1"}, "uid": "u", "resourceVersion": "7"},
            "spec": {"replicas": 2, "revisionHistoryLimit": 10,
                     "template": {"spec": {"containers": [{"name": "c", "image": "img:1",
                                                           "imagePullPolicy": "IfNotPresent",
                                                           "terminationMessagePath": "/dev/termination-log"}],
                                           "restartPolicy": "Always"}}},
            "status": {"replicas": 2}}
    assert _difference(live, WANTED) is None


def test_a_changed_field_is_sent_and_a_changed_list_whole():
    live = {"metadata": {"name": "d", "labels": {"a": "1"}},
            "spec": {"replicas": 3, "template": {"spec": {"containers": [{"name": "c", "image": "img:0"}]}}}}
    assert _difference(live, WANTED) == {"spec": {"replicas": 2, "template": {"spec": {
        "containers": [{"name": "c", "image": "img:1"}]}}}}
    assert _difference({"metadata": {"name": "d"}}, {"metadata": {"name": "d", "labels": {"a": "1"}}}) == \
        {"metadata": {"labels": {"a": "1"}}}


def test_object_paths():
    assert object_path("v1", "Service", "ns", "s") == "/api/v1/namespaces/ns/services/s"
    assert object_path("apps/v1", "Deployment", "ns") == "/apis/apps/v1/namespaces/ns/deployments"
    assert object_path("serving.kserve.io/v1alpha1", "ClusterServingRuntime", None, "r") == \
        "/apis/serving.kserve.io/v1alpha1/clusterservingruntimes/r"
