"""Shared fixtures. Keep this small: TensorFlow is imported only by the fixtures that need it."""

from __future__ import annotations

import ctypes
import os

import netns
import pytest


def pytest_configure(config):
    """Before any test, while the process has one thread: the session's own network, where
    servers can listen on loopback only and nothing can be downloaded (tests/netns.py)."""
    netns.enter()


def pytest_report_header(config):
    return f"network: {'own namespace, loopback only' if netns.reason is None else netns.reason}"


@pytest.fixture(scope="session")
def make_loaded():
    """Factory: wrap a Keras model in a ``LoadedModel`` the engine accepts.

    ``layer`` is a layer path ("name" or "nested/name"); by default the model's last spatial
    layer, as camcli picks it. Inputs are taken as already preprocessed.
    """
    from camcli.labels import generic_labels
    from camcli.loading import LoadedModel, default_layer, resolve_layer

    def build(model, layer: str | None = None, name: str = "test-model"):
        target = resolve_layer(model, layer) if layer else default_layer(model)
        _, height, width, channels = model.input_shape
        return LoadedModel(
            model=model,
            name=name,
            weights="none",
            layer=target.layer,
            layer_path=target.path,
            input_size=(height, width),
            channels=channels,
            preprocess=lambda pixels: pixels,
            preprocess_name="identity",
            labels=generic_labels(int(model.output_shape[-1])),
        )

    return build


@pytest.fixture(scope="session")
def shapes_cnn():
    """A small CNN trained once per session on synthetic shapes (tests/synthetic.py).

    Three classes (square, cross, ring) decided by one bright object at a random place; the
    explained layer ``features`` is 8x8. Returns a namespace with ``model``, ``held_out``
    (200 images the model never saw, seed 999), ``size``, ``classes`` and ``layer``. Shared by
    test_ground_truth.py and test_method_family.py so the suite trains it only once (~15 s).
    """
    from types import SimpleNamespace

    import keras
    from synthetic import make_shapes

    size, classes = 64, 3
    keras.utils.set_random_seed(0)
    train = make_shapes(1500, seed=100, size=size, classes=classes)
    held_out = make_shapes(200, seed=999, size=size, classes=classes)
    inputs = keras.Input((size, size, 3))
    x = inputs
    for i, filters in enumerate((16, 32, 48), start=1):  # conv1 64x64, conv2 32x32, conv3 16x16
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"conv{i}")(x)
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(64, 3, padding="same", activation="relu", name="features")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(classes, name="logits")(x)
    model = keras.Model(inputs, outputs, name="shapes_cnn")
    epochs, batch_size = 6, 32
    steps = epochs * -(-len(train) // batch_size)
    model.compile(
        optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(3e-3, steps)),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(train.images, train.labels, batch_size=batch_size, epochs=epochs, verbose=0)
    return SimpleNamespace(
        model=model, held_out=held_out, size=size, classes=classes, layer="features"
    )


@pytest.fixture(scope="session")
def shapes_vit(tmp_path_factory):
    """A small keras-hub ViT (3 blocks, 6x6 patches + class token) trained once per session on
    synthetic scenes (tests/vit_ground_truth.py), saved as ``.keras``. Returns ``path`` and
    ``held_out`` (100 scenes it never saw). Skipped without keras-hub."""
    from types import SimpleNamespace

    pytest.importorskip("keras_hub")
    import vit_ground_truth

    path = tmp_path_factory.mktemp("shapes-vit") / "vit.keras"
    held_out = vit_ground_truth.train(path)
    return SimpleNamespace(path=path, held_out=held_out)


@pytest.fixture(scope="session")
def shapes_vit_table(shapes_vit):
    """{(method, layer): share of top-1 peaks on the class object} for the trained ViT."""
    import vit_ground_truth

    rates = vit_ground_truth.table(shapes_vit.path, shapes_vit.held_out)
    print("\n" + vit_ground_truth.markdown(rates))
    return rates


@pytest.fixture(scope="session")
def tiny_hub_vit(tmp_path_factory):
    """A tiny keras-hub ViT (2 blocks, 4x4 patches + class token, 3 classes, random weights)
    with its image converter (scale 1/127.5, offset -1, bicubic), saved once per session as a
    preset folder by ``save_to_preset``. Skipped without keras-hub."""
    pytest.importorskip("keras_hub")
    import keras
    import keras_hub

    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.ViTBackbone(image_shape=(32, 32, 3), patch_size=8, num_layers=2,
                                            num_heads=2, hidden_dim=16, mlp_dim=32)
    converter = keras_hub.layers.ViTImageConverter(image_size=(32, 32), scale=1 / 127.5,
                                                   offset=-1.0, interpolation="bicubic")
    model = keras_hub.models.ViTImageClassifier(
        backbone=backbone, num_classes=3,
        preprocessor=keras_hub.models.ViTImageClassifierPreprocessor(image_converter=converter))
    folder = tmp_path_factory.mktemp("tiny-hub-vit") / "preset"
    model.save_to_preset(str(folder))
    return folder


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible server (moto) on 127.0.0.1 and a free port, for the whole session.

    Requests are authenticated: the fixture creates a user whose policy allows everything on S3
    except reading keys under ``secret/`` of any bucket (for access-denied tests), then turns
    authentication on; ``env`` is what a client needs (``AWS_ENDPOINT_URL``, the user's keys).
    ``client()`` is a boto3 S3 client with those keys. Stopped at session end.
    """
    import json
    import logging
    import socket
    from types import SimpleNamespace

    import boto3
    from moto import settings
    from moto.core.authorization import ActionAuthenticatorMixin
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    boot = {"endpoint_url": endpoint, "region_name": "us-east-1",
            "aws_access_key_id": "boot", "aws_secret_access_key": "boot"}
    iam = boto3.client("iam", **boot)
    iam.create_user(UserName="camcli")
    policy = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "s3:*", "Resource": "*"},
        {"Effect": "Deny", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::*/secret/*"},
    ]}
    iam.put_user_policy(UserName="camcli", PolicyName="s3", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName="camcli")["AccessKey"]
    previous = settings.INITIAL_NO_AUTH_ACTION_COUNT
    settings.INITIAL_NO_AUTH_ACTION_COUNT = 0  # from now on every request is checked
    ActionAuthenticatorMixin.request_count = 0
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
        "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
        "AWS_DEFAULT_REGION": "us-east-1",
        "NO_PROXY": "127.0.0.1,localhost",
    }

    def client():
        return boto3.client(
            "s3", endpoint_url=endpoint, region_name="us-east-1",
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        )

    try:
        yield SimpleNamespace(endpoint=endpoint, env=env, client=client)
    finally:
        settings.INITIAL_NO_AUTH_ACTION_COUNT = previous
        server.stop()


@pytest.fixture(scope="session")
def chromium():
    """Headless Chromium's binary (tests/browser.py); installed with apt-get (as root) when
    missing, else the test is skipped with the reason."""
    from browser import ChromiumMissing, find_chromium

    try:
        return find_chromium()
    except ChromiumMissing as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """A Ray head node (``ray start --head --block``) for the whole session, on 127.0.0.1 in
    the session's network namespace: 2 CPUs, no dashboard, a small object store, token
    authentication. ``address`` is for ``--ray-address``; ``auth`` the variables a client
    needs (the token); ``env`` for subprocesses (no proxy for loopback). It stops with
    the session, or with the test process if that dies (parent-death signal)."""
    import secrets
    import shutil
    import signal
    import socket
    import subprocess
    import sys
    import tempfile
    import time
    from pathlib import Path
    from types import SimpleNamespace

    if netns.reason is not None:
        pytest.skip(f"Ray would listen on every interface here: {netns.reason}")
    ray = Path(sys.executable).with_name("ray")
    if not ray.exists():
        pytest.skip("ray is not installed (pip install 'camcli[ray]')")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # Ray's socket paths must be short
    # Ray's token authentication, with a token of the session's (nothing in ~/.ray)
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    env = dict(os.environ, NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost",
               RAY_USAGE_STATS_ENABLED="0", **auth)
    log = tmp_path_factory.mktemp("ray-head") / "head.log"
    libc = ctypes.CDLL(None, use_errno=True)

    def die_with_parent():
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG

    with open(log, "wb") as out:
        head = subprocess.Popen(
            [str(ray), "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
             "--include-dashboard=false", f"--object-store-memory={300 * 1024**2}",
             f"--temp-dir={temp}", "--disable-usage-stats"],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            preexec_fn=die_with_parent,
        )
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if head.poll() is not None:
            pytest.fail(f"ray start failed: {log.read_text()[-2000:]}")
        status = subprocess.run([str(ray), "status", f"--address={address}"], env=env,
                                capture_output=True, text=True)
        if status.returncode == 0 and "CPU" in status.stdout:
            break
        time.sleep(1)
    else:
        head.kill()
        pytest.fail(f"Ray did not come up in 120 s: {log.read_text()[-2000:]}")
    try:
        yield SimpleNamespace(address=address, env=env, auth=auth, temp=temp, log=log)
    finally:
        head.terminate()  # `ray start --block` stops its processes on SIGTERM...
        try:
            head.wait(5)  # ...at once when idle; what is left then is killed
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(10)
        shutil.rmtree(temp, ignore_errors=True)
