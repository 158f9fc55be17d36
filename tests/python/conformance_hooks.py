"""Schemathesis hooks for test_conformance.py (loaded through $SCHEMATHESIS_HOOKS).

The document cannot list what a server was started with, so generated requests name
random models, indexes, heads and reports and nearly all stop at a 404 before any work
is done. Here half of the generated requests get the names of what the test's server
serves instead (the other half keep the random ones, so that the 404s stay checked):
that way the embedding, rerank, search, classify and write paths are really exercised.
"""
import copy

import schemathesis
from hypothesis import strategies as st

# What test_conformance.py serves: field name -> a served name, per kind of route.
EMBEDDER = "tiny-bert"
RERANKER = "tiny-bert-cross-encoder"
INDEX = "support"
HEAD = "topic"
REPORT = "demo.html"
RERANK_PATHS = ("/v1/rerank", "/rerank")


def served_names(path, body):
    """A copy of a generated JSON body with the names of served things put in where the
    generated value is a string (a wrongly typed value is left alone: it is the invalid part)."""
    body = copy.deepcopy(body)
    model = RERANKER if path in RERANK_PATHS else EMBEDDER
    if isinstance(body.get("model"), str):
        body["model"] = model
    if isinstance(body.get("index"), str):
        body["index"] = INDEX
    if isinstance(body.get("heads"), str):
        body["heads"] = HEAD
    elif isinstance(body.get("heads"), list) and body["heads"] and all(isinstance(h, str) for h in body["heads"]):
        body["heads"] = [HEAD]
    stage = body.get("rerank")
    if isinstance(stage, dict) and isinstance(stage.get("model"), str):
        stage["model"] = RERANKER
    return body


@schemathesis.hook
def flatmap_body(context, body):
    if not isinstance(body, dict) or context.operation is None:
        return st.just(body)
    return st.sampled_from([body, served_names(context.operation.path, body)])


@schemathesis.hook
def flatmap_path_parameters(context, path_parameters):
    if (context.operation is None or not isinstance(path_parameters, dict)
            or not isinstance(path_parameters.get("name"), str)):
        return st.just(path_parameters)
    served = REPORT if context.operation.path.startswith("/reports/") else INDEX
    return st.sampled_from([path_parameters, {**path_parameters, "name": served}])
