"""A fleet release adopted into the desired states (its controller's last
step): each plugin's desired state written as the release's build, in the
order of the plans, so that a later rollout starts from it and a host that
comes late (or whose generated id is new) converges to it once the plan is
gone (cleaned out, expired, lost).

A release published with ``--no-wait`` has no controller at its end: the
next controller command (a release's publish, which cleans out old plans,
or a rollout's start) adopts every release past its last host's time that
was not adopted yet (``adopt_due``), and a plan not adopted is never cleaned
out (issue 23, R4)."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from .._errors import FleetError
from ._release_plan import parse, releases_key
from ._schema import Group, Rule, parse_desired_record, rules_json, selector, selector_text

log = logging.getLogger(__name__)

# ``ctl``: the ReleaseController (which imports this module): its Fleet, record, _save, _ours


def adopt_due(ctl: Any, now: float | None = None) -> set[str]:
    """Adopt every plan of this controller's key still planned and past its
    last host's time (``time + bake``) whose release no controller adopted
    (``--no-wait``, or its controller died), oldest first.  The ids of the
    ones due that could not be adopted (Redis refused the write): kept."""
    now = time.time() if now is None else now
    raw = ctl.f._call("read releases", lambda: ctl.f.r.hgetall(releases_key(ctl.f.keys)))
    due = []
    for id_b, value in raw.items():
        rid = id_b.decode("utf-8", "replace")[:40]
        try:
            plan = parse(value, f"release {rid}")
        except FleetError:
            continue  # garbage: no host acts on it
        if plan.id == rid and plan.state == "planned" and now >= plan.last:
            due.append((plan.rev, rid, value))
    left = set()
    for _, rid, value in sorted(due):
        rec = ctl.record(rid) or {"id": rid}
        if rec.get("adopted"):
            continue
        try:
            plan = ctl._ours(rid, value)  # signed by this controller's key: else not adopted
        except FleetError:
            continue
        if plan.state != "planned":
            continue
        rec.update(plan=plan.record(), builds=plan.digests)
        rec.setdefault("hosts", selector_text(plan.match))
        ctl.progress(f"release {rid}: adopted after its time (no controller waited for it)")
        adopt(ctl, rec)
        if not rec.get("adopted"):
            left.add(rid)
    return left


def adopt(ctl: Any, rec: dict[str, Any]) -> list[str]:
    """Write each plugin's desired state as the release's build for the
    release's hosts (a decision after the release: a later rollout starts
    from it, and hosts that already run it do nothing); the rules for
    other hosts stay.  Each rule names the release and its plugins
    (``Group``): a host that did not switch (its staged release failed at
    the switch, or it restarted since) moves them together, all or none,
    and only once every one of them is written.

    Ordered by the release's plan, not by when this runs: a plugin whose
    desired state a newer decision wrote (a release published after this
    one, adopted first; a rollout written after this plan) keeps it, so
    two controllers adopting at once leave the later release whole, never
    a pair no decision made.  All of it is one transaction (``WATCH``: a
    write meanwhile reads again).  The plugins skipped."""
    import redis

    from ._signing import sign_decision

    k, rid = ctl.f.keys, rec["id"]
    try:
        mine = parse(str(rec["plan"]).encode(), f"release {rid}").rev
    except (FleetError, KeyError):
        mine = ctl._rev()  # a record from before plans were kept in it
    match = selector(rec.get("hosts") or "*")
    group = Group(rid, tuple(rec["builds"]))  # a host moves them together, or not
    key, exp = ctl.f.signing_key(), ctl.f.expires
    names = list(rec["builds"])

    def attempt() -> list[str] | None:
        with ctl.f.r.pipeline(transaction=True) as pipe:
            pipe.watch(k.desired, k.gen, releases_key(k))
            raws = pipe.hmget(k.desired, names)
            gen = pipe.get(k.gen)
            rev = max((int(gen) if gen and gen.isdigit() else 0) + 1, int(time.time() * 1000))
            out, skipped = {}, []
            for name, raw in zip(names, raws, strict=True):
                prev = _prev(ctl, name, raw)
                mine_rule = Rule(match, rec["builds"][name], release=group)
                if match:  # its hosts' rule replaced, the others' kept
                    replaced = [(r, rule) for r, rule in prev if rule.match == match]
                    newer = _newer(ctl, pipe, replaced, mine)
                    rules = [mine_rule] + [r for _, r in prev if r.match != match]
                else:  # every host: a newer decision's rules for some hosts stay first
                    kept = [(r, x) for r, x in prev if _newer(ctl, pipe, [(r, x)], mine)]
                    whole = [(r, x) for r, x in kept if not x.match]  # one for every host
                    newer = _newer(ctl, pipe, whole, mine)
                    rules = [x for _, x in kept] + [mine_rule]
                if newer is not None:
                    skipped.append(f"{name} ({newer})")
                    continue
                # The plan's own rev (above the record it replaces): a plan published after
                # this one stays the newer decision on hosts (a rev of now outranked it, and
                # the older release came back over the newer one at its adoption)
                at_rev = max(mine, _record_rev(raw) + 1)
                body: dict[str, Any] = {"rev": at_rev, "rules": rules_json(rules)}
                body["at"] = time.time()
                if key is not None:  # else insecure=True: unsigned, as set_desired writes
                    body.update(sign_decision(key, name, at_rev, None, rules, expires=exp))
                out[name] = json.dumps(body)
            pipe.multi()
            if out:
                pipe.hset(k.desired, mapping=out)
                pipe.set(k.gen, rev)
                pipe.publish(k.wake, f"release {rid}")
            try:
                pipe.execute()
            except redis.exceptions.WatchError:
                return None  # another writer meanwhile: read again
            return skipped

    def attempts() -> list[str]:
        for _ in range(50):
            done = attempt()
            if done is not None:
                return done
            time.sleep(0.01)
        raise FleetError("Redis kept changing under the write")

    try:
        skipped: list[str] = ctl.f._call("write desired states", attempts)
    except FleetError as exc:  # the hosts switched; only the record is behind
        log.warning("release %s: desired states not written: %s", rid, exc)
        return []
    rec["adopted"] = time.time()  # a later command does not adopt it again; prune may go on
    ctl._save(rec)
    if skipped:
        ctl.progress(
            f"release {rid}: a newer decision holds {', '.join(skipped)}: kept (the newest "
            f"decision wins, each plugin; the rest of this release follows it)"
        )
    return skipped


def _record_rev(raw: Any) -> int:
    """The rev of a desired-state record as stored (-1: none, or unreadable)."""
    try:
        rev = json.loads(raw)["rev"] if raw is not None else -1
    except (ValueError, TypeError, KeyError):
        return -1
    return rev if isinstance(rev, int) and not isinstance(rev, bool) else -1


def _prev(ctl: Any, name: str, raw: Any) -> list[Any]:
    """(rev, rule) of each rule of ``name``'s desired state now; a record
    this controller's key did not sign counts as none."""
    if raw is None:
        return []
    try:
        drec, rev, rules = parse_desired_record(raw, name)
    except FleetError:
        return []
    if not ctl.f.signed_by_us(name, drec, rev, rules):
        return []
    return [(rev, r) for r in rules]


def _newer(ctl: Any, pipe: Any, prev: list[Any], mine: int) -> str | None:
    """What newer decision than the plan of rev ``mine`` wrote a rule the
    release would replace, if one did: a release's (its plan's rev
    above), or a rollout's (its rev above: written after the plan)."""
    for rev, rule in prev:
        if rule.release is None:
            if rev > mine:
                return f"rev {rev}, after this release"
            continue
        raw = pipe.hget(releases_key(ctl.f.keys), rule.release.id)
        try:
            other = parse(raw, f"release {rule.release.id}").rev if raw else -1
        except FleetError:
            other = -1  # gone or garbage: an older release, cleaned out
        if other > mine:
            return f"release {rule.release.id}, published after this one"
    return None
