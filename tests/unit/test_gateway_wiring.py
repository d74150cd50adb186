"""Tests healmesh.gateway.wiring: a gateway worker's service name from its command line."""

def test_a_workers_service_name_comes_from_its_command_line():
    from healmesh.gateway.wiring import _service_name

    cmd = ["python", "-m", "_bentoml_impl.worker.service", "gateway.service:Gateway", "--fd", "3",
           "--service-name", "gateway", "--worker-id", "2"]
    assert _service_name(cmd) == "gateway"
    assert _service_name(["python", "-m", "pytest"]) is None
    assert _service_name(["x", "--service-name"]) is None
