"""mTLS building blocks: identities from certificates and XFCC, contradiction checks, the
certificate files' reload rules, and the `tls:` settings."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from pydantic import ValidationError

from asm_proxy.config import TlsSettings
from asm_proxy.identity import Workload, from_spiffe, identity_conflict
from asm_proxy.testing import check_config
from asm_proxy.tls import CertificateFiles, TlsError, peer_of_certificate, peer_of_xfcc
from tests.support.certs import CertificateAuthority

SHOP = "spiffe://cluster.local/ns/shop/sa/cart"


class TestIdentity:
    def test_the_one_spiffe_uri_san_names_the_workload(self) -> None:
        peer = peer_of_certificate([b"envoy.shop.svc", SHOP.encode()])
        assert peer == Workload(namespace="shop", service_account="cart", principal=SHOP)

    def test_no_or_two_spiffe_ids_prove_nothing(self) -> None:
        assert peer_of_certificate([b"a.example"]) is None
        two = [SHOP.encode(), b"spiffe://cluster.local/ns/other/sa/x"]
        assert peer_of_certificate(two) is None

    def test_xfcc_takes_the_element_its_own_sidecar_added(self) -> None:
        header = (
            "By=spiffe://cluster.local/ns/edge/sa/gw;URI=spiffe://cluster.local/ns/edge/sa/gw,"
            f'By=spiffe://cluster.local/ns/asm-proxy/sa/asm-proxy;Hash=ab12;URI="{SHOP}"'
        )
        peer = peer_of_xfcc(header)
        assert peer is not None and peer.namespace == "shop"
        assert peer_of_xfcc("By=x;Hash=y") is None

    def test_a_contradicting_namespace_is_a_conflict(self) -> None:
        proven = from_spiffe(SHOP)
        claims = {"xds.node.metadata.NAMESPACE": "billing"}
        assert "billing" in (identity_conflict(claims, proven) or "")
        assert identity_conflict({"xds.node.metadata.NAMESPACE": "shop"}, proven) is None
        assert identity_conflict({}, proven) is None  # silent node metadata: the cert says
        assert identity_conflict(claims, Workload(namespace="shop")) is None  # not proven


@pytest.fixture
def files(tmp_path: Path) -> tuple[CertificateAuthority, TlsSettings]:
    ca = CertificateAuthority(tmp_path / "ca")
    issued = ca.issue("server", dns=["asm-proxy.test"], client=False)
    return ca, TlsSettings(
        cert_file=str(issued.cert),
        key_file=str(issued.key),
        client_ca_file=str(ca.cert_path),
        check_interval=0,
    )


class TestCertificateFiles:
    def test_unchanged_files_are_not_reread(
        self, files: tuple[CertificateAuthority, TlsSettings]
    ) -> None:
        certificates = CertificateFiles(files[1])
        assert certificates.fetch() is None
        assert (certificates.reloads, certificates.failures) == (0, 0)

    def test_a_new_pair_is_taken_a_mismatched_one_is_not(
        self, files: tuple[CertificateAuthority, TlsSettings]
    ) -> None:
        ca, settings = files
        certificates = CertificateFiles(settings)
        new = ca.issue("server-2", dns=["asm-proxy.test"], client=False)
        shutil.copyfile(new.cert, settings.cert_file)  # the key is still the old one
        assert certificates.fetch() is None
        assert certificates.failures == 1
        assert certificates.fetch() is None  # said once per change, not at every handshake
        assert certificates.failures == 1
        shutil.copyfile(new.key, settings.key_file)
        assert certificates.fetch() is not None
        assert certificates.reloads == 1

    def test_unusable_files_fail_the_start(self, tmp_path: Path) -> None:
        (tmp_path / "garbage.crt").write_text("not a certificate")
        settings = TlsSettings(
            cert_file=str(tmp_path / "garbage.crt"),
            key_file=str(tmp_path / "garbage.crt"),
            require_client_cert=False,
        )
        with pytest.raises(TlsError, match=r"garbage\.crt"):
            CertificateFiles(settings)


class TestSettings:
    def test_client_certificates_need_a_ca(self) -> None:
        with pytest.raises(ValidationError, match="requireClientCert needs clientCaFile"):
            TlsSettings(cert_file="a", key_file="b")

    def test_validate_names_unreadable_files_at_tls(self, tmp_path: Path) -> None:
        text = (
            f"tls: {{certFile: {tmp_path}/none.crt, keyFile: {tmp_path}/none.key,"
            " requireClientCert: false}\nplugins: []\n"
        )
        (problem,) = check_config(text).problems
        assert problem.startswith("asm-proxy.yaml:1: field 'tls': cannot read ")
        assert "none.crt" in problem
