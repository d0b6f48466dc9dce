"""`fedvid deploy certs` and the deployment engine's address checks (no processes started)."""

import ipaddress
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.cli.supernode.register import try_load_public_key
from flwr.supercore.primitives.asymmetric import uses_nist_ec_curve

from benchmark.cli import main as fedvid_main
from benchmark.federation.engine import FederationError, check_connection_security, is_loopback
from benchmark.federation.security import CredentialsError, Layout, make_credentials
from benchmark.specs import EngineSpec


def _cert(path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_deploy_certs_cli_makes_ca_server_cert_and_node_keys_flower_accepts(tmp_path, capsys):
    out = tmp_path / "creds"
    assert (
        fedvid_main(
            [
                "deploy",
                "certs",
                str(out),
                "--host",
                "superlink.example.org",
                "--host",
                "10.0.0.5",
                "--supernode",
                "hospital-a",
                "--supernode",
                "hospital-b",
            ]
        )
        == 0
    )
    layout = Layout(out)
    ca, server = _cert(layout.ca_cert), _cert(layout.server_cert)
    # the server certificate names the given hosts (+ loopback, which the SuperLink's own SuperExec
    # dials when it listens on 0.0.0.0) and is signed by the CA
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["superlink.example.org"]
    assert sans.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address(a) for a in ("10.0.0.5", "127.0.0.1", "::1")
    ]
    assert server.issuer == ca.subject
    ca.public_key().verify(server.signature, server.tbs_certificate_bytes, ec.ECDSA(hashes.SHA384()))
    server.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    # the key in server.key is the certificate's key
    server_key = serialization.load_pem_private_key(layout.server_key.read_bytes(), None)
    assert server_key.public_key().public_numbers() == server.public_key().public_numbers()
    assert layout.superlink_ca.read_bytes() == layout.ca_cert.read_bytes()
    for node in ("hospital-a", "hospital-b"):
        # what flower-supernode --auth-supernode-private-key loads: an OpenSSH EC private key
        private = serialization.load_ssh_private_key(layout.node_key(node).read_bytes(), None)
        assert isinstance(private, ec.EllipticCurvePrivateKey) and uses_nist_ec_curve(private.public_key())
        # what `flwr supernode register` loads, and it is that private key's public half
        registered = try_load_public_key(layout.registered_key(node))
        assert registered == try_load_public_key(layout.node_pub(node))
        assert (
            serialization.load_ssh_public_key(layout.node_pub(node).read_bytes()).public_numbers()
            == private.public_key().public_numbers()
        )
        assert layout.node_ca(node).read_bytes() == layout.ca_cert.read_bytes()
        assert _mode(layout.node_key(node)) == 0o600 and _mode(layout.node_pub(node)) == 0o644
    assert _mode(layout.ca_key) == 0o600 and _mode(layout.server_key) == 0o600
    a, b = (
        serialization.load_ssh_private_key(layout.node_key(n).read_bytes(), None) for n in ("hospital-a", "hospital-b")
    )
    assert a.private_numbers().private_value != b.private_numbers().private_value
    assert "flwr supernode register" in capsys.readouterr().out


def test_deploy_certs_refuses_to_overwrite_before_writing_anything_and_rotates_on_request(tmp_path):
    out = tmp_path / "creds"
    make_credentials(out, ["127.0.0.1"], ["a"])
    layout = Layout(out)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    # a new node plus an existing one: nothing is written, not even the new node's files
    with pytest.raises(CredentialsError, match=r"refusing to replace existing file.*node\.key.*--overwrite"):
        make_credentials(out, [], ["b", "a"])
    assert not layout.node_key("b").exists()
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    with pytest.raises(SystemExit, match="refusing to replace"):
        fedvid_main(["deploy", "certs", str(out), "--supernode", "a"])
    # rotation: only a's key pair changes; the CA and the server certificate stay
    make_credentials(out, [], ["a"], overwrite=True)
    assert layout.node_key("a").read_bytes() != before[layout.node_key("a")]
    assert layout.registered_key("a").read_bytes() == layout.node_pub("a").read_bytes() != before[layout.node_pub("a")]
    assert layout.ca_cert.read_bytes() == before[layout.ca_cert]
    assert layout.server_cert.read_bytes() == before[layout.server_cert]


def test_deploy_certs_signs_with_an_existing_institution_ca(tmp_path):
    own = tmp_path / "own"
    make_credentials(own, ["127.0.0.1"], [])  # stands in for the institution's CA
    out = tmp_path / "creds"
    assert (
        fedvid_main(
            [
                "deploy",
                "certs",
                str(out),
                "--host",
                "link.uni.example",
                "--ca-cert",
                str(Layout(own).ca_cert),
                "--ca-key",
                str(Layout(own).ca_key),
                "--supernode",
                "a",
            ]
        )
        == 0
    )
    layout = Layout(out)
    assert not layout.ca_key.exists()  # the institution's CA key is never copied
    assert layout.ca_cert.read_bytes() == Layout(own).ca_cert.read_bytes()
    _cert(layout.server_cert).verify_directly_issued_by(_cert(Layout(own).ca_cert))
    with pytest.raises(SystemExit, match="--ca-key .* is not the key of --ca-cert"):
        fedvid_main(
            [
                "deploy",
                "certs",
                str(tmp_path / "x"),
                "--host",
                "h",
                "--ca-cert",
                str(Layout(own).ca_cert),
                "--ca-key",
                str(Layout(out).server_key),
            ]
        )
    with pytest.raises(SystemExit, match="--ca-key .*node.key: not an unencrypted PEM private key"):
        fedvid_main(
            [
                "deploy",
                "certs",
                str(tmp_path / "x"),
                "--host",
                "h",
                "--ca-cert",
                str(Layout(own).ca_cert),
                "--ca-key",
                str(Layout(out).node_key("a")),
            ]
        )
    assert not (tmp_path / "x").exists()


def test_deploy_certs_bad_input_names_the_value(tmp_path):
    with pytest.raises(SystemExit, match=r"--host 'bad host!' is neither an IP address nor a DNS name"):
        fedvid_main(["deploy", "certs", str(tmp_path / "a"), "--host", "bad host!"])
    with pytest.raises(SystemExit, match=r"--supernode '\.\./x'"):
        fedvid_main(["deploy", "certs", str(tmp_path / "b"), "--supernode", "../x"])
    with pytest.raises(SystemExit, match="both --ca-cert and --ca-key"):
        fedvid_main(["deploy", "certs", str(tmp_path / "c"), "--host", "h", "--ca-cert", "x.crt"])
    assert not any(tmp_path.iterdir())


def _engine(**kw):
    return EngineSpec.from_config(
        {
            "name": "deployment",
            "superlink": None,
            "insecure": False,
            "trusted_network": False,
            "root_certificates": None,
            **kw,
        }
    )


def test_deployment_plaintext_to_a_non_loopback_superlink_is_refused_unless_the_network_is_trusted(tmp_path):
    with pytest.raises(FederationError, match=r"engine.insecure=true .*10\.0\.0\.5:9093.*engine.trusted_network=true"):
        check_connection_security(_engine(superlink="10.0.0.5:9093", insecure=True))
    with pytest.raises(FederationError, match="not a loopback"):
        check_connection_security(_engine(superlink="superlink.example.org:9093", insecure=True))
    check_connection_security(_engine(superlink="10.0.0.5:9093", insecure=True, trusted_network=True))
    check_connection_security(_engine(superlink="127.0.0.1:9093", insecure=True))
    check_connection_security(_engine(superlink="[::1]:9093", insecure=True))
    check_connection_security(_engine(insecure=True))  # self-started: 127.0.0.1 only
    with pytest.raises(FederationError, match=r"engine.root_certificates=.*missing.crt: no such file"):
        check_connection_security(_engine(superlink="10.0.0.5:9093", root_certificates=str(tmp_path / "missing.crt")))
    assert is_loopback("127.0.0.2") and is_loopback("localhost") and not is_loopback("0.0.0.0")
