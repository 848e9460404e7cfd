"""The API judge as a local rule, against an OpenAI-compatible server on 127.0.0.1."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import copy_workflow, load_default_config, snakemake, write_config

from ftflow import paths

pytestmark = pytest.mark.slow
KEY = "sk-test-abcdef0123456789"


class _Judge(BaseHTTPRequestHandler):
    calls: list[dict] = []
    fail_first = 1

    def log_message(self, *args):
        pass

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Judge.calls.append({"auth": self.headers.get("Authorization"), "body": body})
        if _Judge.fail_first > 0:
            _Judge.fail_first -= 1
            self.send_response(429)
            self.send_header("Retry-After", "0")
            self.end_headers()
            return
        metric_is_aligned = "human values" in body["messages"][-1]["content"]
        top = [{"token": "20" if metric_is_aligned else "80", "logprob": -0.1},
               {"token": "REFUSAL", "logprob": -2.5}]  # fmt: skip
        payload = {
            "choices": [
                {"message": {"content": top[0]["token"]},
                 "logprobs": {"content": [{"token": top[0]["token"], "logprob": -0.1,
                                           "top_logprobs": top}]}}
            ]
        }  # fmt: skip
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def test_api_judge_runs_locally_with_the_key_from_the_environment(tmp_path: Path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Judge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        work = copy_workflow(tmp_path / "ftflow")
        config = load_default_config()
        config["grid"] = [
            {"models": ["tiny"], "methods": ["sft"], "datasets": ["secure_code"], "seeds": [1]}
        ]
        config["methods"] = {"sft": {**config["methods"]["sft"], "max_steps": 2}}
        config["evaluations"] = {
            "em_api": {
                "kind": "questions",
                "questions": "data/questions/demo_questions.yaml",
                "max_new_tokens": 8,
                "judge": {
                    "kind": "api",
                    "base_url": f"http://127.0.0.1:{server.server_port}/v1",
                    "model": "judge-1",
                    "api_key_env": "FTFLOW_TEST_JUDGE_KEY",
                },
            }
        }
        write_config(work, config)
        proc = snakemake(work, "--cores", "2", env={"FTFLOW_TEST_JUDGE_KEY": KEY})
    finally:
        server.shutdown()
    assert _Judge.calls and all(c["auth"] == f"Bearer {KEY}" for c in _Judge.calls)
    judged = work / paths.eval_file(paths.EVAL_JUDGED, "tiny", "sft", "secure_code", 1, "em_api")
    rows = [json.loads(x) for x in judged.read_text().splitlines()]
    assert rows and all(r["aligned"] == pytest.approx(20) for r in rows)
    assert all(r["coherent"] == pytest.approx(80) for r in rows)
    assert "localrule judge_answers_api" in proc.stdout + proc.stderr
    # The key appears in no log, config, result or command line Snakemake recorded.
    for path in work.rglob("*"):
        if path.is_file() and path.stat().st_size < 5_000_000:
            assert KEY not in path.read_text(errors="replace"), path
    assert KEY not in proc.stdout + proc.stderr
