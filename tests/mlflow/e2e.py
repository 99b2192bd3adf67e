"""The real `mlflow` client against a Quiver node, unchanged.

Run by `tests/tests/mlflow.rs` with MLFLOW_TRACKING_URI (a follower's HTTP address) and
MLFLOW_TRACKING_TOKEN (a Quiver token) set, after the namespace `default` was given a policy
whose Staging gate requires a version's code commit and run id. Every step checks what the
client got; the first failure ends the script with a traceback and a non-zero exit.
"""

import os
import sys

import mlflow
import mlflow.pyfunc
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

MODEL = "mlflow-e2e"


class AddOne(mlflow.pyfunc.PythonModel):
    """Doubles x and adds one: an answer the test can check."""

    def predict(self, context, model_input, params=None):
        return model_input["x"] * 2 + 1


def step(text):
    print(f"step: {text}", flush=True)


def expect_error(code, call, *args, **kwargs):
    """Runs `call`, which must fail with MLflow error `code`; returns the message."""
    try:
        call(*args, **kwargs)
    except MlflowException as e:
        assert e.error_code == code, f"expected {code}, got {e.error_code}: {e.message}"
        return e.message
    raise AssertionError(f"expected {code}, but the call succeeded")


def main():
    client = MlflowClient()

    step("a request without a token is refused with UNAUTHENTICATED")
    token = os.environ.pop("MLFLOW_TRACKING_TOKEN")
    try:
        expect_error("UNAUTHENTICATED", MlflowClient().get_registered_model, MODEL)
    finally:
        os.environ["MLFLOW_TRACKING_TOKEN"] = token

    step("log_model with registered_model_name logs, uploads and registers version 1")
    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=AddOne(),
        registered_model_name=MODEL,
        pip_requirements=[],
    )
    assert info.registered_model_version is not None, info
    version = str(info.registered_model_version)
    mv = client.get_model_version(MODEL, version)
    assert mv.status == "READY", mv
    assert mv.current_stage == "None", mv
    assert mv.source == f"models:/{info.model_id}", (mv.source, info.model_id)

    registered = client.get_registered_model(MODEL)
    assert [v.version for v in registered.latest_versions] == [version], registered

    step("set alias champion and load models:/mlflow-e2e@champion")
    client.set_registered_model_alias(MODEL, "champion", version)
    assert client.get_model_version_by_alias(MODEL, "champion").version == version
    loaded = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    answer = list(loaded.predict(pd.DataFrame({"x": [1, 2, 20]})))
    assert answer == [3, 5, 41], answer
    by_number = mlflow.pyfunc.load_model(f"models:/{MODEL}/{version}")
    assert list(by_number.predict(pd.DataFrame({"x": [0]}))) == [1]

    step("create, get and search registered models, in pages")
    names = [f"page-{i}" for i in range(5)]
    for name in names:
        client.create_registered_model(name, tags={"suite": "paging"}, description=name)
    got = client.get_registered_model("page-3")
    assert got.name == "page-3" and got.description == "page-3", got
    assert got.tags == {"suite": "paging"}, got.tags
    seen, token, pages = [], None, 0
    while True:
        page = client.search_registered_models(
            filter_string="name LIKE 'page-%'", max_results=2, page_token=token
        )
        seen += [m.name for m in page]
        pages += 1
        token = page.token
        if not token:
            break
        assert pages < 10, "paging does not end"
    assert seen == names, seen
    assert pages >= 3, pages
    seen, token = [], None
    while True:
        page = client.search_registered_models(
            filter_string="name LIKE 'page-%'",
            max_results=2,
            order_by=["name DESC"],
            page_token=token,
        )
        seen += [m.name for m in page]
        token = page.token
        if not token:
            break
        assert len(seen) <= len(names), "paging does not end"
    assert seen == sorted(names, reverse=True), seen
    found = client.search_model_versions(f"name='{MODEL}'")
    assert [v.version for v in found] == [version], found
    client.update_registered_model("page-0", description="updated")
    assert client.get_registered_model("page-0").description == "updated"

    step("the error codes the client acts on")
    expect_error("RESOURCE_DOES_NOT_EXIST", client.get_registered_model, "no-such-model")
    expect_error("RESOURCE_DOES_NOT_EXIST", client.get_model_version, MODEL, "99")
    expect_error("RESOURCE_ALREADY_EXISTS", client.create_registered_model, "page-1")
    message = expect_error(
        "INVALID_PARAMETER_VALUE", client.create_registered_model, "Not A Quiver Name"
    )
    assert "name" in message, message
    expect_error("INVALID_PARAMETER_VALUE", client.rename_registered_model, "page-2", "page-x")

    step("a transition refused by the required-metadata gate, and one allowed")
    gated = "gated-model"
    client.create_registered_model(gated)
    bare = client.create_model_version(gated, source="s3://bucket/models/bare")
    assert bare.status == "READY", bare
    assert bare.tags.get("quiver.pointer") == "true", bare.tags
    assert client.get_model_version_download_uri(gated, bare.version) == "s3://bucket/models/bare"
    message = expect_error(
        "INVALID_STATE",
        client.transition_model_version_stage,
        gated,
        bare.version,
        "Staging",
    )
    assert "required metadata" in message, message
    traced = client.create_model_version(
        gated,
        source="s3://bucket/models/traced",
        run_id="run-42",
        tags={"mlflow.source.git.commit": "3f2a9c1", "quiver.data_snapshot_id": "snap-7"},
    )
    moved = client.transition_model_version_stage(gated, traced.version, "Staging")
    assert moved.current_stage == "Staging", moved
    latest = client.get_latest_versions(gated, stages=["Staging"])
    assert [v.version for v in latest] == [traced.version], latest

    step("delete archives a version")
    client.delete_model_version(gated, bare.version)
    assert client.get_model_version(gated, bare.version).current_stage == "Archived"

    https_uri = os.environ.get("QUIVER_HTTPS_URI")
    if https_uri:
        step("over HTTPS on a node's API port, verified with the cluster CA")
        os.environ["MLFLOW_TRACKING_SERVER_CERT_PATH"] = os.environ["QUIVER_CA"]
        secure = MlflowClient(tracking_uri=https_uri, registry_uri=https_uri)
        assert secure.get_registered_model(MODEL).name == MODEL
        assert secure.get_model_version_by_alias(MODEL, "champion").version == version
        found = secure.search_registered_models(filter_string=f"name = '{MODEL}'")
        assert [m.name for m in found] == [MODEL], found
        expect_error("RESOURCE_DOES_NOT_EXIST", secure.get_registered_model, "no-such-model")
        os.environ.pop("MLFLOW_TRACKING_SERVER_CERT_PATH")

    print("mlflow e2e: all steps passed", flush=True)


if __name__ == "__main__":
    try:
        main()
    except Exception:
        import traceback

        traceback.print_exc()
        sys.exit(1)
