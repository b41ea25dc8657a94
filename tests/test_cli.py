"""The command line as a marketer meets it: the example workspace with sample data, exit codes,
one-line errors without tracebacks, --json, and commands that must change nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

REPO = Path(__file__).resolve().parent.parent


def cli(workspace: Path, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")}
    env["PYTHONPATH"] = str(REPO)
    result = subprocess.run([sys.executable, "-m", "orchestrator", "--config", str(workspace / "settings.toml"), *args],
                            capture_output=True, text=True, cwd=workspace, env=env, timeout=300)
    if check:
        assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return result


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example workspace with 400 sample customers imported (shared by the tests below)."""
    import shutil

    root = tmp_path_factory.mktemp("cli") / "ws"
    root.mkdir()
    for name in ("segments", "templates", "campaigns"):
        shutil.copytree(REPO / name, root / name)
    shutil.copy(REPO / "settings.toml", root / "settings.toml")
    cli(root, "sample-data", "var/sample", "--customers", "400", check=True)
    first = cli(root, "import", "customers", "var/sample/customers.csv", "--json")
    assert first.returncode in (0, 3), first.stderr
    cli(root, "import", "purchases", "var/sample/purchases.csv", "--json", check=True)
    return root


def ledger_count(workspace: Path) -> int:
    engine = sa.create_engine(f"sqlite:///{workspace / 'var' / 'orchestrator.db'}")
    with engine.connect() as conn:
        count = conn.execute(sa.text("SELECT count(*) FROM deliveries")).scalar_one()
    engine.dispose()
    return count


def test_validate_passes_on_the_example_workspace(loaded: Path) -> None:
    result = cli(loaded, "validate", "--now", "2026-12-01T10:00", "--json", check=True)
    records = json_lines(result.stdout)
    assert not [r for r in records if "problem" in r]
    campaigns = {r["campaign"]: r for r in records if "campaign" in r}
    assert len(campaigns) == len(list((REPO / "campaigns").glob("*.yaml")))
    assert all(max(r["sms_parts"] or {"1": 1}, key=int) in ("1", "2") for r in campaigns.values())


def test_plan_prints_a_decision_per_recipient_and_changes_nothing(loaded: Path) -> None:
    before = ledger_count(loaded)
    result = cli(loaded, "plan", "monthly-bonus-balance", "--now", "2026-12-01T10:00", "--json", check=True)
    records = json_lines(result.stdout)
    decisions = [r for r in records if r["type"] == "decision"]
    summary = records[-1]
    assert summary["type"] == "summary" and summary["targeted"] == len({d["customer_id"] for d in decisions}) > 0
    for decision in decisions:
        if decision["status"] == "planned":
            assert decision["send_at"].endswith("Z") and decision["send_at_local"]
            local_hour = int(decision["send_at_local"][11:13])
            assert 8 <= local_hour < 22 if decision["channel"] == "email" else 9 <= local_hour < 21
        else:
            assert decision["reason"]
    assert ledger_count(loaded) == before


def test_run_twice_is_one_run_and_report_shows_the_funnel(loaded: Path) -> None:
    first = json_lines(cli(loaded, "run", "discount-status", "--now", "2026-12-02T12:00", "--json", check=True).stdout)[-1]
    second = json_lines(cli(loaded, "run", "discount-status", "--now", "2026-12-03T18:00", "--json", check=True).stdout)[-1]
    assert second["already_planned"] and second["run"] == first["run"] and second["planned"] == first["planned"]
    rows = json_lines(cli(loaded, "deliveries", "--campaign", "discount-status", "--json", check=True).stdout)
    assert len(rows) == first["planned"] + first["suppressed"]
    assert set(rows[0]) >= {"id", "run", "campaign", "customer_id", "channel", "category", "status", "reason",
                            "send_at", "sent_at", "attempts", "error", "provider_id"}
    funnel = [r for r in json_lines(cli(loaded, "report", "discount-status", "--json", check=True).stdout) if r["type"] == "funnel"]
    assert funnel[-1]["run"] == "all" and funnel[-1]["planned"] == first["planned"]
    assert funnel[-1]["suppressed"] == first["suppressed"]


def test_simulate_writes_nothing_and_never_exceeds_a_cap(loaded: Path) -> None:
    before = ledger_count(loaded)
    records = json_lines(cli(loaded, "simulate", "--start", "2026-12-01", "--days", "31", "--json", check=True).stdout)
    assert ledger_count(loaded) == before
    fired = {r["campaign"] for r in records if r["type"] == "run"}
    assert fired == {p.stem for p in (REPO / "campaigns").glob("*.yaml")}
    worst = {r["channel"]: r["messages"] for r in records if r["type"] == "max_per_customer"}
    assert worst and all(count <= 1 for count in worst.values())
    assert any(r["type"] == "peak_hour" for r in records)
    days = [r for r in records if r["type"] == "day"]
    assert days and all(r["total"] == sum(v for k, v in r.items() if k in ("sms", "email", "phone")) for r in days)
    assert sum(r["total"] for r in days) == sum(r["planned"] for r in records if r["type"] == "run")
    assert any(r["type"] == "suppressed" and len(r) > 1 for r in records)


def test_customer_show_and_unsubscribe(loaded: Path) -> None:
    rows = json_lines(cli(loaded, "deliveries", "--campaign", "discount-status", "--status", "planned", "--json", check=True).stdout)
    customer = rows[0]["customer_id"]
    card = json_lines(cli(loaded, "customer", "show", customer, "--now", "2026-12-02T12:00", "--json", check=True).stdout)[0]
    assert card["id"] == customer and card["history"]
    assert card["next_allowed"]["sms"]["allowed"] and card["next_allowed"]["sms"]["from"] >= "2027-01-01"
    result = json_lines(cli(loaded, "unsubscribe", customer, "--channel", "sms", "--json", check=True).stdout)[0]
    assert result["withdrawn_messages"] == 1
    after = json_lines(cli(loaded, "deliveries", "--customer", customer, "--json", check=True).stdout)
    assert {(r["status"], r["reason"]) for r in after if r["channel"] == "sms"} == {("suppressed", "unsubscribed")}


@pytest.mark.parametrize(
    ("files", "args", "expected"),
    [
        ({"campaigns/broken.yaml": "name: broken\nsegment: bonus_holders\ncategory: promo\nchannels: [sms]\ntemplate: nope\n"},
         ["plan", "broken"], "templates/sms/nope.txt.j2"),
        ({"campaigns/broken.yaml": "name: broken\nsegment: nowhere\ncategory: promo\nchannels: [sms]\ntemplate: discount_status\n"},
         ["plan", "broken"], "campaigns/broken.yaml:2: segment"),
        ({"segments/bad.yaml": "description: x\nwhere:\n  all:\n    - bonus_balanse: {gt: 0}\n"},
         ["segment", "show", "bad"], "segments/bad.yaml:4"),
        ({"settings.toml": '[general]\ntimezone = "Europe/Moscow"\nfoo = 1\n'}, ["segment", "list"], "settings.toml:3: general.foo"),
    ],
)
def test_bad_files_give_one_clear_line_and_exit_2(loaded: Path, tmp_path: Path, files: dict, args: list, expected: str) -> None:
    import shutil

    workspace = tmp_path / "ws"
    shutil.copytree(loaded, workspace, ignore=shutil.ignore_patterns("var"))
    for name, text in files.items():
        (workspace / name).write_text(text, encoding="utf-8")
    result = cli(workspace, *args)
    assert result.returncode == 2
    assert expected in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_usage_errors_exit_2_and_unknown_campaign_is_named(loaded: Path) -> None:
    assert cli(loaded, "plan").returncode == 2
    result = cli(loaded, "plan", "no-such-campaign")
    assert result.returncode == 2 and "no campaign 'no-such-campaign'" in result.stderr
    result = cli(loaded, "plan", "monthly-bonus-balance", "--now", "tomorrow")
    assert result.returncode == 2 and "--now" in result.stderr


def test_small_commands_do_not_load_the_heavy_libraries() -> None:
    """The CLI answers at once because SQLAlchemy, Jinja2, babel and phonenumbers are imported
    only by the commands that use them (speed itself is measured in bench/, not here)."""
    probe = (
        "import sys\n"
        "from orchestrator.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('sqlalchemy', 'jinja2', 'babel', 'phonenumbers', 'holidays') if m in sys.modules]\n"
        "print('heavy=' + ','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "heavy="
