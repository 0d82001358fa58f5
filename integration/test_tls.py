"""TLS on the public listener (HTTP/1.1 and HTTP/2 by ALPN) and mutual TLS
between cluster nodes, with certificates made by trustme."""

import ssl

import httpx
import pytest
import trustme

from harness import start_static_cluster, start_with_config


@pytest.fixture
def ca():
    return trustme.CA()


def write_pair(ca, directory, name):
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    return cert, key


def test_public_tls_http1_and_http2(procs, upstream, ca, tmp_path):
    cert, key = write_pair(ca, tmp_path, "public")
    node = start_with_config(
        procs, f'[primary]\nmode = "dev"\n[upstream]\nurl = "{upstream}"\n',
        env={"LITEGATE_PUBLIC_TLS_CERT": str(cert), "LITEGATE_PUBLIC_TLS_KEY": str(key)},
    )
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    url = f"https://127.0.0.1:{node.public_port}/echo"
    context = ssl.create_default_context(cafile=str(ca_file))
    for http2, version in ((False, "HTTP/1.1"), (True, "HTTP/2")):
        with httpx.Client(verify=context, http2=http2) as client:
            r = client.get(url)
        assert r.status_code == 200 and r.http_version == version
        headers = dict((k, v) for k, v in r.json()["headers"])
        assert headers["x-forwarded-proto"] == "https"
    # Plain HTTP on the TLS port is not answered as HTTP.
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{node.public_port}/echo", timeout=5)


def test_cluster_mutual_tls(procs, upstream, ca, tmp_path):
    cert, key = write_pair(ca, tmp_path, "node")
    ca_file = tmp_path / "cluster-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    primary, replica = start_static_cluster(
        procs, [upstream, upstream], secret=False,
        tls={"tls_ca": str(ca_file), "tls_cert": str(cert), "tls_key": str(key)},
    )
    r = httpx.post(f"{replica.url}/echo", content=b"over mtls")
    assert r.status_code == 200 and r.headers["litegate-served-by"] == "node-1"
    assert r.json()["body_len"] == len(b"over mtls")

    cluster_url = f"https://127.0.0.1:{primary.cluster_port}/echo"
    server_trust = ssl.create_default_context(cafile=str(ca_file))
    # No client certificate: refused during the handshake.
    with pytest.raises(httpx.HTTPError):
        httpx.post(cluster_url, verify=server_trust, content=b"x", timeout=5)
    # A client certificate from another CA: refused too.
    other = trustme.CA()
    other_cert, other_key = write_pair(other, tmp_path, "intruder")
    intruder = ssl.create_default_context(cafile=str(ca_file))
    intruder.load_cert_chain(str(other_cert), str(other_key))
    with pytest.raises(httpx.HTTPError):
        httpx.post(cluster_url, verify=intruder, content=b"x", timeout=5)
    # The right CA's certificate is let in (and is then fenced like any peer).
    peer = ssl.create_default_context(cafile=str(ca_file))
    peer.load_cert_chain(str(cert), str(key))
    ok = httpx.post(cluster_url, verify=peer, content=b"x", headers={"litegate-term": "0"}, timeout=5)
    assert ok.status_code == 421 and ok.headers["litegate-error"] == "not-primary"
