"""`validate`: every campaign, segment, template and the settings, before anything is planned.

Templates are rendered for every member of each campaign's segment, so that a customer whose
data breaks a template (no first name, a name that pushes an SMS to three parts) is found here and
not at 10:00 on Monday.  All problems are collected, not just the first.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from sqlalchemy.engine import Engine

from orchestrator.campaigns import campaign_files, load_campaign
from orchestrator.errors import OrchestratorError
from orchestrator.planner import Prepared, prepare
from orchestrator.policy.decide import Decision
from orchestrator.settings import Settings

UTC = timezone.utc
EXAMPLES_PER_PROBLEM = 3


@dataclass
class CampaignCheck:
    name: str
    members: int = 0
    rendered: Counter = field(default_factory=Counter)                # channel → messages rendered
    sms_parts: Counter = field(default_factory=Counter)               # parts → messages
    sms_max_units: int = 0
    sms_encodings: Counter = field(default_factory=Counter)


@dataclass
class ValidationReport:
    problems: list[str] = field(default_factory=list)
    checked_files: list[str] = field(default_factory=list)
    campaigns: list[CampaignCheck] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def validate(
    settings: Settings,
    engine: Engine | None,
    files: list[Path] | None = None,
    *,
    now: datetime,
    progress: Callable[[int], None] | None = None,
) -> ValidationReport:
    from orchestrator.rendering import Renderer
    from orchestrator.segments import load_segment, validate_segment

    report = ValidationReport()
    segment_paths = sorted(settings.segments_dir.glob("*.yaml"))
    campaign_paths = campaign_files(settings.campaigns_dir)
    template_paths = sorted(settings.templates_dir.glob("*/*.j2"))
    if files:
        chosen = {p.resolve() for p in files}
        for path in files:
            if not path.exists():
                report.problems.append(f"{path}: no such file")
        segment_paths = [p for p in segment_paths if p.resolve() in chosen] + [
            p for p in files if p.exists() and p.resolve().parent == settings.segments_dir.resolve() and p not in segment_paths
        ]
        campaign_paths = [p for p in files if p.exists() and p.suffix in (".yaml", ".yml") and p.resolve().parent != settings.segments_dir.resolve()]
        template_paths = [p for p in files if p.exists() and p.suffix == ".j2"]
    renderer = Renderer(settings.templates_dir, max_output_bytes=settings.templates.max_output_kb * 1024)
    for path in segment_paths:
        _collect(report, path, lambda p=path: validate_segment(load_segment(p), engine))
    for path in template_paths:
        _collect(report, path, lambda p=path: _check_template(renderer, settings, p))
    for path in campaign_paths:
        prepared: list[Prepared] = []
        _collect(report, path, lambda p=path: prepared.append(prepare(settings, load_campaign(p), engine=engine)))
        if prepared and engine is not None:
            report.campaigns.append(_render_members(report, engine, prepared[0], now, progress))
    return report


def _collect(report: ValidationReport, path: Path, check: Callable[[], Any]) -> None:
    report.checked_files.append(str(path))
    try:
        check()
    except OrchestratorError as error:
        report.problems.append(str(error))


def _check_template(renderer: Any, settings: Settings, path: Path) -> None:
    """Compile one template on its own; an email's subject may come from a campaign, so it is
    required only when a campaign uses the template (checked with the campaign)."""
    channel = path.parent.name
    name = path.name.split(".", 1)[0]
    renderer.check(channel, name, subject="" if channel == "email" else None)


def _render_members(report: ValidationReport, engine: Engine, prepared: Prepared, now: datetime,
                    progress: Callable[[int], None] | None) -> CampaignCheck:
    """Render every channel's template for every member, whatever the policy would decide."""
    from orchestrator.planner import render_payload, recipient_of
    from orchestrator.segments import iter_segment_pages

    campaign = prepared.campaign
    check = CampaignCheck(campaign.name)
    failures: dict[str, list[str]] = defaultdict(list)
    failure_counts: Counter = Counter()
    fire = int(now.timestamp())
    for page in iter_segment_pages(engine, prepared.segment, now=now, settings=prepared.settings,
                                   page_size=prepared.settings.planner.batch_size):
        for row in page:
            check.members += 1
            recipient = recipient_of(row)
            zone = recipient.zones[0] if len(recipient.zones) == 1 else prepared.settings.general.timezone
            for channel in campaign.channels:
                decision = Decision(channel=channel, status="planned", reason=None, send_at=fire,
                                    expires_at=fire, zone=zone, zone_source=recipient.zone_source, detail="")
                payload, error = render_payload(prepared, channel, row, decision, fire)
                if error is not None:
                    key = f"{campaign.name}: {channel}: {error}"
                    failure_counts[key] += 1
                    if len(failures[key]) < EXAMPLES_PER_PROBLEM:
                        failures[key].append(row["id"])
                    continue
                check.rendered[channel] += 1
                if payload and "sms" in payload:
                    check.sms_parts[payload["sms"]["parts"]] += 1
                    check.sms_encodings[payload["sms"]["encoding"]] += 1
                    check.sms_max_units = max(check.sms_max_units, payload["sms"]["units"])
        if progress:
            progress(len(page))
    for key, count in failure_counts.items():
        examples = ", ".join(failures[key])
        report.problems.append(f"{key} (for {count} customer{'s' if count != 1 else ''}, e.g. {examples})")
    return check
