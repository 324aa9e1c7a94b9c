"""The control plane's generated configuration, checked without starting any process."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import kubernetes
import pytest

from batchcompute_testbed.controlplane import (
    ADMIN_USERNAME,
    OPERATOR_GROUPS,
    OPERATOR_USERNAME,
    ControlPlane,
    ControlPlaneError,
    find_kube_apiserver,
)
from batchcompute_testbed.controlplane.certs import ClientCA
from batchcompute_testbed.controlplane.cluster import kubeconfig_document, token_file_lines
from batchcompute_testbed.controlplane.process import free_ports, tail


def test_token_file_rows_quote_groups() -> None:
    rows = token_file_lines({"alice": ("tok", ("a", "b"))})
    assert rows == ['tok,alice,alice,"a,b"']


def test_token_file_rejects_commas_in_names() -> None:
    with pytest.raises(ValueError, match="comma"):
        token_file_lines({"a,b": ("tok", ())})


def test_operator_identity_is_its_service_account() -> None:
    assert OPERATOR_USERNAME == "system:serviceaccount:batchcompute-system:batchcompute-operator"
    assert "system:serviceaccounts:batchcompute-system" in OPERATOR_GROUPS


def test_users_declared_before_start_get_tokens() -> None:
    plane = ControlPlane(users={"viewer": ["viewers"]})
    assert plane.add_user("second", ["g"]) is None
    rows = token_file_lines(plane._token_users)
    names = [row.split(",")[1] for row in rows]
    assert names == [ADMIN_USERNAME, OPERATOR_USERNAME, "viewer", "second"]
    assert all("system:authenticated" in row for row in rows)
    with pytest.raises(ValueError, match="already exists"):
        plane.add_user("viewer")
    with pytest.raises(ControlPlaneError):
        _ = plane.kubeconfig_admin


def test_kubeconfig_loads_with_token_and_ca(tmp_path: Path) -> None:
    ca = ClientCA(tmp_path)
    doc = kubeconfig_document(
        server="https://127.0.0.1:6443", ca_pem=ca.cert_file.read_bytes(), user="u", token="t"
    )
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps(doc))
    configuration = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(str(path), client_configuration=configuration)
    assert configuration.host == "https://127.0.0.1:6443"
    assert "Bearer t" in configuration.api_key.values()
    assert Path(configuration.ssl_ca_cert).read_bytes() == ca.cert_file.read_bytes()


def test_client_certificates_carry_user_and_groups(tmp_path: Path) -> None:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    cert = ClientCA(tmp_path).issue("bob", ("g1", "g2"), "bob")
    parsed = x509.load_pem_x509_certificate(cert.cert_file.read_bytes())
    subject = parsed.subject
    assert [a.value for a in subject.get_attributes_for_oid(NameOID.COMMON_NAME)] == ["bob"]
    orgs = [a.value for a in subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    assert orgs == ["g1", "g2"]
    doc = kubeconfig_document(server="https://h", ca_pem=None, user="bob", client_cert=cert)
    creds = doc["users"][0]["user"]
    assert base64.b64decode(creds["client-certificate-data"]) == cert.cert_file.read_bytes()
    assert doc["clusters"][0]["cluster"]["insecure-skip-tls-verify"] is True


def test_audit_flags_only_when_asked(tmp_path: Path) -> None:
    plane = ControlPlane(run_dir=tmp_path, audit_log=True)
    plane.run_dir = tmp_path
    plane._prepare_files()
    plane.etcd_url = "http://127.0.0.1:1"
    argv = plane._apiserver_argv(Path("/bin/kube-apiserver"), 1234)
    assert "--secure-port=1234" in argv
    assert f"--audit-log-path={tmp_path / 'audit.log'}" in argv
    assert "level: Metadata" in (tmp_path / "audit-policy.yaml").read_text()

    quiet = ControlPlane(run_dir=tmp_path)
    quiet.run_dir = tmp_path
    quiet._prepare_files()
    quiet.etcd_url = "http://127.0.0.1:1"
    argv = quiet._apiserver_argv(Path("/bin/kube-apiserver"), 1234)
    assert not any(a.startswith("--audit") for a in argv)


def test_free_ports_are_distinct() -> None:
    ports = free_ports(5)
    assert len(set(ports)) == 5


def test_tail_reports_unreadable_files(tmp_path: Path) -> None:
    assert "cannot read" in tail(tmp_path / "missing.log")
    log = tmp_path / "x.log"
    log.write_text("\n".join(str(i) for i in range(100)))
    assert tail(log, 3) == "97\n98\n99"


def test_binary_override_must_be_executable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    find_kube_apiserver.cache_clear()
    monkeypatch.setenv("BCO_KUBE_APISERVER", str(tmp_path / "nope"))
    try:
        with pytest.raises(ControlPlaneError, match="not an executable"):
            find_kube_apiserver()
    finally:
        find_kube_apiserver.cache_clear()
