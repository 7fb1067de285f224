"""The report: report.md and report.html from hand-built trials tables, escaping of hostile
names, and the HTML opened in headless Chromium (plots render, hover works, no console
errors, no network)."""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sweep.config import ConstraintSpec
from sweep.errors import SweepError
from sweep.report.document import write_report
from sweep.report.figures import curve_traces
from sweep.report.markdown_report import md_escape
from sweep.report.summary import summarize

REASON, INSTRUCT, RETENTION = (
    "lm_eval/toy_reasoning/exact_match,final",
    "lm_eval/toy_instruct/exact_match,final",
    "probe/length_retention",
)
HELD = "lm_eval/toy_reasoning_heldout/exact_match,final"
HOSTILE = '<script>alert(1)</script>|x<img src=x onerror="window.__pwned=1">'
OBJECTIVES_2 = [(REASON, "maximize"), (INSTRUCT, "maximize")]


def Constraint(metric: str, op: str, value: float) -> ConstraintSpec:
    """The spec's own constraint record, as the runner passes it."""
    return ConstraintSpec(metric=metric, op=op, value=value)


RETENTION_FLOOR = Constraint(RETENTION, ">=", 0.5)


def trials_table(extra_metric: str | None = None, param: str | None = None) -> pd.DataFrame:
    """Eight trials: alpha trades reasoning for instruct skill; 5 failed; 6 infeasible.

    Feasible completed (alpha, beta=1 unless noted) -> (reasoning, instruct):
      0: a=0.0 -> (0.9, 0.1)   1: a=0.25 -> (0.7, 0.5)   2: a=0.5 -> (0.6, 0.6)
      3: a=0.75 -> (0.3, 0.8)  4: a=1.0 -> (0.1, 0.9)    7: a=0.5, b=0.6 -> (0.4, 0.4) dominated
    Front: 0, 1, 2, 3, 4. Maximin over the front (spans 0.8 each): min utilities
    0, 0.5, 0.625, 0.25, 0 -> trial 2.
    """
    cells = [
        (0.0, 1.0, 0.9, 0.1, 0.6),
        (0.25, 1.0, 0.7, 0.5, 0.7),
        (0.5, 1.0, 0.6, 0.6, 0.8),
        (0.75, 1.0, 0.3, 0.8, 0.9),
        (1.0, 1.0, 0.1, 0.9, 1.0),
        (0.6, 0.9, np.nan, np.nan, np.nan),
        (0.4, 0.7, 0.95, 0.95, 0.2),
        (0.5, 0.6, 0.4, 0.4, 0.9),
    ]
    rows = []
    for number, (alpha, beta, reason, instruct, retention) in enumerate(cells):
        failed = number == 5
        length = [20.0 * (1 - alpha) + 6 - step * (1 - retention) for step in range(6)]
        reward = [0.5 - 0.1 * (1 - alpha) * min(step, 3) for step in range(6)]
        row = {
            "number": number,
            "state": "FAIL" if failed else "COMPLETE",
            "error": f"worker lost: {HOSTILE}" if failed else None,
            "params/alpha": alpha,
            "params/beta": beta,
            REASON: reason,
            INSTRUCT: instruct,
            RETENTION: retention,
            "feasible": (not failed) and retention >= 0.5,
            "constraint_violation": 0.5 - retention,
            "duration_s": 2.5 + number,
            "worker": "node-1:4242",
            "ray_trial_id": f"t{number}",
            "started_at": "2026-11-25T21:00:00",
            "finished_at": "2026-11-25T21:00:03",
            "curves": "{}"
            if failed
            else json.dumps({"response_length/mean": length, "critic/score/mean": reward, "actor/kl": []}),
        }
        if extra_metric:
            row[extra_metric] = 0.25
        if param:
            row[f"params/{param}"] = 0.5
        rows.append(row)
    return pd.DataFrame(rows)


def heldout_table() -> pd.DataFrame:
    return pd.DataFrame({"number": [0, 2, 4], HELD: [0.85, 0.55, 0.05]})


# ---------------------------------------------------------------- markdown


def test_markdown_states_the_balanced_point_and_the_front(tmp_path):
    trials = trials_table()
    html_path, md_path = write_report(
        tmp_path / "study", trials=trials, objectives=OBJECTIVES_2, constraints=[RETENTION_FLOOR], spec_name="demo"
    )
    assert html_path == tmp_path / "study" / "report.html" and md_path == tmp_path / "study" / "report.md"
    md = md_path.read_text()
    assert "- **Trials:** 8 (7 complete, 1 failed); 6 feasible; 5 on the Pareto front" in md
    assert "- **Balanced point:** trial 2 (alpha = 0.5, beta = 1), rule maximin:" in md
    assert f"  - {md_escape(REASON)}: 0.6" in md and f"  - {md_escape(INSTRUCT)}: 0.6" in md
    # Hypervolume against the default reference point (worst observed minus 10% of the span,
    # over every COMPLETE trial: reasoning 0.1 - 0.085 = 0.015, instruct 0.1 - 0.085 = 0.015).
    expected = summarize(trials, OBJECTIVES_2, [RETENTION_FLOOR])
    assert expected.reference == pytest.approx((0.015, 0.015))
    assert f"- **Hypervolume:** {expected.hypervolume:.4g} (reference point 0.015, 0.015, in objective order)" in md
    front_rows = [line for line in md.splitlines() if re.match(r"^\| \d+ \|", line) and "Pareto" not in line]
    front_section = md.split("## Pareto front (5 trials)")[1].split("##")[0]
    numbers = [int(line.split("|")[1]) for line in front_section.splitlines() if re.match(r"^\| \d+ \|", line)]
    assert numbers == [0, 1, 2, 3, 4]
    assert "| 2 | 0.5 | 1 | 0.6 | 0.6 | yes |" in front_section
    assert front_rows  # the failed trial is listed with its (escaped) error too
    assert "| 5 | worker lost: " in md


def test_weighted_rule_and_weights_are_reported(tmp_path):
    _, md_path = write_report(
        tmp_path,
        trials=trials_table(),
        objectives=OBJECTIVES_2,
        constraints=[RETENTION_FLOOR],
        spec_name="demo",
        balanced_rule="weighted",
        weights={REASON: 1.0, INSTRUCT: 3.0},
    )
    md = md_path.read_text()
    # (u_reason + 3 u_instruct) / 4 over the front: 0.25, 0.5625, 0.625, 0.71875, 0.75 -> trial 4.
    assert "- **Balanced point:** trial 4 (alpha = 1, beta = 1), rule weighted:" in md
    assert f"(weights {md_escape(REASON)} = 1, {md_escape(INSTRUCT)} = 3)" in md


def test_heldout_scores_sit_beside_search_scores(tmp_path):
    html_path, md_path = write_report(
        tmp_path,
        trials=trials_table(),
        objectives=OBJECTIVES_2,
        constraints=[RETENTION_FLOOR],
        spec_name="demo",
        heldout=heldout_table(),
    )
    md = md_path.read_text()
    assert (
        f"| trial | search: {md_escape(REASON)} | search: {md_escape(INSTRUCT)} | held-out: {md_escape(HELD)} |" in md
    )
    assert "| 0 | 0.9 | 0.1 | 0.85 |" in md and "| 2 | 0.6 | 0.6 | 0.55 |" in md
    html = html_path.read_text()
    held = html.split('<table id="heldout">')[1].split("</table>")[0]
    assert '<tr class="balanced"><td>2</td><td>0.5</td><td>1</td><td>0.6</td><td>0.6</td><td>0.55</td></tr>' in held


def test_hostile_names_are_escaped_in_markdown_and_html(tmp_path):
    trials = trials_table(extra_metric=f"probe/{HOSTILE}", param=HOSTILE)
    html_path, md_path = write_report(
        tmp_path,
        trials=trials,
        objectives=OBJECTIVES_2 + [(f"probe/{HOSTILE}", "minimize")],
        constraints=[RETENTION_FLOOR],
        spec_name=HOSTILE,
        heldout=heldout_table().assign(**{HOSTILE: [1.0, 2.0, 3.0]}),
    )
    md = md_path.read_text()
    assert not re.search(r"(?<!\\)[<>]", md)  # every angle bracket is backslash-escaped: no tag survives
    assert (
        md.splitlines()[0]
        == r'# Sweep report: \<script\>alert(1)\</script\>\|x\<img src=x onerror="window.\_\_pwned=1"\>'
    )
    # Every table row keeps its column count: escaped pipes do not split cells.
    for block in md.split("\n\n"):
        rows = [line for line in block.splitlines() if line.startswith("|")]
        widths = {len(re.findall(r"(?<!\\)\|", line)) for line in rows}
        assert len(widths) <= 1, block
    html = html_path.read_text()
    assert "<script>alert(1)" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;|x&lt;img src=x onerror=&quot;window.__pwned=1&quot;&gt;" in html
    assert f"<title>Sweep report: {'&lt;script&gt;'}" in html


def test_bad_inputs_fail_before_anything_is_written(tmp_path):
    out = tmp_path / "study"
    with pytest.raises(SweepError, match="no 'number' column"):
        write_report(out, trials=trials_table().drop(columns=["number"]), objectives=OBJECTIVES_2, spec_name="x")
    with pytest.raises(SweepError, match="unknown balanced-point rule 'middle'"):
        write_report(out, trials=trials_table(), objectives=OBJECTIVES_2, spec_name="x", balanced_rule="middle")
    with pytest.raises(SweepError, match="held-out table needs a 'number' column"):
        write_report(
            out, trials=trials_table(), objectives=OBJECTIVES_2, spec_name="x", heldout=pd.DataFrame({HELD: [0.5]})
        )
    assert not out.exists()


def test_empty_and_all_infeasible_studies_still_report(tmp_path):
    empty = trials_table().iloc[:0]
    _, md_path = write_report(tmp_path / "empty", trials=empty, objectives=OBJECTIVES_2, spec_name="empty")
    md = md_path.read_text()
    assert "- **Trials:** 0 (0 complete, 0 failed); 0 feasible; 0 on the Pareto front" in md
    assert "- **Balanced point:** none (no completed, feasible trial yet)" in md
    infeasible = trials_table().assign(feasible=False)
    html_path, md_path = write_report(
        tmp_path / "infeasible", trials=infeasible, objectives=OBJECTIVES_2, spec_name="bad"
    )
    assert "## Pareto front (0 trials)\n\nNo completed, feasible trial yet." in md_path.read_text()
    assert "Balanced point:</b> none" in html_path.read_text()


def test_curves_show_the_front_against_the_alpha_extremes():
    trials = trials_table()
    front = np.array([False, True, True, False, False, False, False, False])
    picked = curve_traces(trials, front=front)
    assert [(pos, is_front) for pos, _, is_front in picked] == [(0, False), (1, True), (2, True), (4, False)]
    assert picked[0][1] == "min alpha (0): trial 0" and picked[3][1] == "max alpha (1): trial 4"


def test_html_is_self_contained(tmp_path):
    html_path, _ = write_report(tmp_path, trials=trials_table(), objectives=OBJECTIVES_2, spec_name="demo")
    html = html_path.read_text()
    assert not re.search(r"""<(script|link|img|iframe)[^>]+(src|href)\s*=\s*["']?(https?:)?//""", html, re.I)
    assert "plotly.js v" in html  # the library itself is inlined, once
    assert html.count('<script type="text/javascript">/**') == 1
    assert 3_000_000 < html_path.stat().st_size < 8_000_000  # plotly.js inline is ~4.8 MB


# ---------------------------------------------------------------- the browser


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class DevTools:
    """A minimal Chrome DevTools Protocol client over `--remote-debugging-pipe`: Chromium
    reads commands from fd 3 and writes replies and events to fd 4, each JSON message
    ending in a NUL byte. Enough to load a page, evaluate JS and collect events."""

    def __init__(self, exe: str):
        self.profile = tempfile.mkdtemp(prefix="sweep-chromium-")
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()

        def child_fds() -> None:  # runs in the child: put the pipe ends on fds 3 and 4
            a, b = os.dup(to_chrome_r), os.dup(from_chrome_w)
            os.dup2(a, 3)
            os.dup2(b, 4)
            os.set_inheritable(3, True)
            os.set_inheritable(4, True)

        flags = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={self.profile}",
            "--remote-debugging-pipe",
            "about:blank",
        ]
        self.proc = subprocess.Popen(
            [exe, *flags], preexec_fn=child_fds, close_fds=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []
        self.session: str | None = None

    def send(self, method: str, params: dict | None = None, *, timeout: float = 30.0) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if self.session and not method.startswith("Target."):
            message["sessionId"] = self.session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def wait_for(self, method: str, *, timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == method for e in self.events):
            self.events.append(self._read(deadline))
        return next(e for e in self.events if e.get("method") == method)

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def open(self, path: Path) -> None:
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Page", "Network"):
            self.send(f"{domain}.enable")
        self.events.clear()
        self.send("Page.navigate", {"url": path.resolve().as_uri()})
        self.wait_for("Page.loadEventFired")

    def problems(self) -> list[str]:
        """Console errors and warnings, uncaught exceptions and browser log errors so far."""
        out = []
        for e in self.events:
            method, params = e.get("method"), e.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "warning", "assert"):
                out.append(
                    f"console.{params['type']}: {[a.get('value', a.get('description')) for a in params.get('args', [])]}"
                )
            elif method == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                out.append(f"exception: {details.get('exception', {}).get('description') or details.get('text')}")
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") in ("error", "warning"):
                out.append(f"log: {params['entry'].get('text')}")
        return out

    def requested_urls(self) -> list[str]:
        return [e["params"]["request"]["url"] for e in self.events if e.get("method") == "Network.requestWillBeSent"]

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no answer from Chromium")
            ready, _, _ = select.select([self._from_chrome], [], [], left)
            if ready:
                chunk = os.read(self._from_chrome, 1 << 20)
                if not chunk:
                    raise RuntimeError("Chromium closed the DevTools pipe")
                self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        os.close(self._to_chrome)
        os.close(self._from_chrome)
        shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture(scope="module")
def browser():
    exe = _chromium()
    if exe is None:
        pytest.skip("chromium is not installed (Debian: apt-get install -y chromium); the browser test needs it")
    client = DevTools(exe)
    yield client
    client.close()


def _wait_rendered(browser: DevTools, ids: list[str], timeout: float = 20.0) -> dict[str, int]:
    """Wait until every plot div holds plotly's SVG; return .main-svg counts per div."""
    query = f"JSON.stringify(Object.fromEntries({json.dumps(ids)}.map(id => [id, document.querySelectorAll('#' + id + ' .main-svg').length])))"
    deadline = time.monotonic() + timeout
    while True:
        counts = json.loads(browser.evaluate(query))
        if all(counts.values()) or time.monotonic() > deadline:
            return counts
        time.sleep(0.1)


def test_report_renders_in_headless_chromium(browser, tmp_path):
    trials = trials_table(extra_metric=f"probe/{HOSTILE}")
    html_path, _ = write_report(
        tmp_path / "two",
        trials=trials,
        objectives=OBJECTIVES_2,
        constraints=[RETENTION_FLOOR],
        spec_name=HOSTILE,
        heldout=heldout_table(),
    )
    browser.open(html_path)
    plots = ["fig-pareto", "fig-map-0", "fig-map-1", "fig-length", "fig-reward", "fig-hypervolume"]
    counts = _wait_rendered(browser, plots)
    assert all(counts[p] > 0 for p in plots), counts
    assert browser.problems() == []
    assert all(url.startswith("file://") for url in browser.requested_urls()), browser.requested_urls()

    # Every completed, finite trial is a point: 6 feasible + the infeasible 6, plus the balanced star.
    assert browser.evaluate("document.querySelectorAll('#fig-pareto .scatterlayer .point').length") == 8
    # Hover on the first front point shows alpha, beta and every metric.
    names = browser.evaluate("document.getElementById('fig-pareto').data.map(t => t.name)")
    front_curve = names.index("Pareto front")
    hover = browser.evaluate(
        f"Plotly.Fx.hover('fig-pareto', [{{curveNumber: {front_curve}, pointNumber: 0}}]);"
        "document.querySelector('#fig-pareto .hovertext').textContent"
    )
    for text in (
        "trial 0",
        "alpha = 0",
        "beta = 1",
        f"{REASON} = 0.9",
        f"{INSTRUCT} = 0.1",
        f"{RETENTION} = 0.6",
        f"probe/{HOSTILE} = 0.25",
    ):
        assert text in hover, hover
    # The hostile string is shown as text, never run or parsed as markup.
    assert browser.evaluate("document.title") == f"Sweep report: {HOSTILE}"
    assert browser.evaluate("typeof window.__pwned") == "undefined"
    assert browser.evaluate("document.querySelectorAll('img').length") == 0
    assert browser.evaluate("document.querySelector('h1').textContent") == f"Sweep report: {HOSTILE}"
    assert browser.evaluate("document.querySelectorAll('#trials tr').length") == 1 + len(trials)
    assert browser.evaluate("document.querySelector('#trials tr.balanced td').textContent") == "2"
    assert (
        browser.evaluate("document.querySelectorAll('#fig-length .scatterlayer .trace').length") == 5
    )  # front 0-4 (0 and 4 are the extremes)


def test_three_objective_report_renders_a_pair_grid(browser, tmp_path):
    objectives = OBJECTIVES_2 + [(RETENTION, "maximize")]
    html_path, _ = write_report(tmp_path / "three", trials=trials_table(), objectives=objectives, spec_name="three")
    browser.open(html_path)
    counts = _wait_rendered(browser, ["fig-pareto", "fig-map-2", "fig-hypervolume"])
    assert all(counts.values()), counts
    assert browser.problems() == []
    titles = browser.evaluate(
        "[...document.querySelectorAll('#fig-pareto .g-xtitle, #fig-pareto .g-x2title, #fig-pareto .g-x3title')].map(e => e.textContent)"
    )
    assert titles == [f"{REASON} ↑", f"{REASON} ↑", f"{INSTRUCT} ↑"]


def test_report_study_reads_the_table_and_the_spec(tmp_path):
    from sweep.config import parse_spec

    text = f"""
name: from-disk
models: {{pretrained: /m/p, instruct: /m/i, reasoning: /m/r}}
evals:
  lm_eval: {{search_tasks: [toy_reasoning, toy_instruct]}}
  probe: {{prompts: /m/prompts.jsonl}}
objectives:
  - {{metric: "{REASON}", direction: maximize}}
  - {{metric: "{INSTRUCT}", direction: maximize}}
constraints: ["{RETENTION} >= 0.5"]
results_dir: {tmp_path}
"""
    spec = parse_spec(text, base_dir=tmp_path)
    from sweep.report.document import report_study

    with pytest.raises(SweepError, match=r"no trials table at .*trials.parquet: run `python -m sweep run SPEC` first"):
        report_study(spec.study_dir, spec=spec)
    spec.study_dir.mkdir(parents=True)
    trials_table().to_parquet(spec.study_dir / "trials.parquet", index=False)
    html_path, md_path = report_study(spec.study_dir, spec=spec)
    md = md_path.read_text()
    assert md.startswith("# Sweep report: from-disk\n")
    assert "- **Balanced point:** trial 2 (alpha = 0.5, beta = 1)" in md
    assert f"- **Constraints:** {md_escape(RETENTION)} \\>= 0.5" in md
    probe = "16 steps x 4 prompts x 4 samples, at most 64 new tokens; learning rate 0.0001, full update"
    assert f"- **Probe:** {probe}; KL 0.05 against the candidate\n" in md
    assert f"<p><b>Probe:</b> {probe}; KL 0.05 against the candidate</p>" in html_path.read_text()
    assert html_path.stat().st_size > 3_000_000
    pulled = spec.evals.probe.model_copy(
        update={"reference": "/m/sft", "kl_coef": 0.2, "loss_agg": "seq-mean-token-mean", "mini_batches": 2}
    )
    _, md_path = report_study(
        spec.study_dir, spec=spec.model_copy(update={"evals": spec.evals.model_copy(update={"probe": pulled})})
    )
    pulled_text = "seq-mean-token-mean loss, 2 mini-batches a step (clip 0.2); KL 0.2 against /m/sft"
    assert f"- **Probe:** {probe}, {pulled_text}\n" in md_path.read_text()


def test_report_options_come_from_the_spec_report_section(tmp_path):
    from types import SimpleNamespace

    from sweep.config import parse_spec
    from sweep.report.document import report_options

    objectives = [
        SimpleNamespace(metric=REASON, direction="maximize"),
        SimpleNamespace(metric=INSTRUCT, direction="maximize"),
    ]
    assert report_options(SimpleNamespace(objectives=objectives)) == {
        "balanced_rule": "maximin",
        "weights": None,
        "reference": None,
    }
    spec = parse_spec(
        f"""
name: opts
models: {{pretrained: /m/p, instruct: /m/i, reasoning: /m/r}}
evals: {{lm_eval: {{search_tasks: [toy_reasoning, toy_instruct]}}}}
objectives:
  - {{metric: "{REASON}", direction: maximize}}
  - {{metric: "{INSTRUCT}", direction: maximize}}
report: {{balanced_rule: weighted, weights: {{"{REASON}": 2, "{INSTRUCT}": 1}}, reference: [-0.5, 0.0]}}
""",
        base_dir=tmp_path,
    )
    assert report_options(spec) == {
        "balanced_rule": "weighted",
        "weights": {REASON: 2.0, INSTRUCT: 1.0},
        "reference": [-0.5, 0.0],
    }
    with pytest.raises(SweepError, match="report.reference needs one value per objective"):
        report_options(
            SimpleNamespace(
                objectives=objectives, report=SimpleNamespace(balanced_rule="maximin", weights=None, reference=[0.0])
            )
        )


def test_noise_bands_become_error_bars_on_the_front_and_the_probe_curves():
    """A trial that recorded `probe/length_retention_noise` and the normalized curves with
    their per-step noise gets error bars of exactly those widths."""
    from sweep.report.figures import curve_figure, pareto_figure
    from sweep.report.front import Objective

    trials = trials_table()
    trials["probe/length_retention_noise"] = [0.05 * (k + 1) for k in range(len(trials))]
    normalized = {"response_length/normalized": [10.0, 9.0, 8.0], "response_length/normalized/noise": [0.5, 0.6, 0.7]}
    trials.loc[2, "curves"] = json.dumps(json.loads(trials.loc[2, "curves"]) | normalized)
    objectives = [Objective(REASON, "maximize"), Objective(RETENTION, "maximize")]
    front = np.array([True, True, True, True, True, False, False, False])
    eligible = front.copy()
    fig = pareto_figure(trials, objectives, eligible=eligible, front=front, balanced=2)
    front_trace = next(t for t in fig.data if t.name == "Pareto front")
    assert front_trace.error_x.array is None  # no noise column for the lm-eval objective
    assert list(front_trace.error_y.array) == pytest.approx([0.05, 0.10, 0.15, 0.20, 0.25])

    curves = curve_figure(
        trials, key="response_length/mean", title="Mean response length", y_title="tokens", front=front
    )
    by_trial = {t.name: t for t in curves.data}
    normalized_trace = next(t for name, t in by_trial.items() if "trial 2" in name)
    assert list(normalized_trace.y) == [10.0, 9.0, 8.0] and list(normalized_trace.error_y.array) == [0.5, 0.6, 0.7]
    raw_trace = next(t for name, t in by_trial.items() if "trial 1" in name)
    assert raw_trace.error_y.array is None and len(raw_trace.y) == 6  # raw curve, no band recorded
    assert "normalized per prompt" in curves.layout.title.text


def test_sweep_report_summarizes_the_study_once(tmp_path, monkeypatch, capsys):
    """`sweep report` prints the balanced point and writes the report from one summary."""
    import sweep.report.document
    import sweep.report.summary
    from sweep.cli import main
    from tests.sweep.test_compare import GOOD, make_study

    study = make_study(tmp_path, "once", GOOD)
    calls = []
    real = sweep.report.summary.summarize

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(sweep.report.summary, "summarize", counting)
    monkeypatch.setattr(sweep.report.document, "summarize", counting)
    assert main(["report", str(study)]) == 0
    assert "balanced point" in capsys.readouterr().out
    assert len(calls) == 1
