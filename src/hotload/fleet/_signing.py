"""Signed decisions and the keys that sign them.

The operator signs the *decision*, not only the bytes (TUF's lesson: a
signature over a build alone lets anyone who can write the desired state
replay an old signed build, a downgrade).  A desired-state record carries,
besides its rules:

``plugin``      the plugin it is for (a record copied under another name fails)
``rev``         the decision counter: every desired write takes one above every
                rev written before (each rollout step, an abort, a rollback,
                a rollback to an older build included), never below the
                writer's clock in milliseconds, so it keeps rising after Redis
                lost its data
``revision``    the history's revision (a rollout's or rollback's number)
``signed_at``   when it was signed (seconds since the epoch)
``expires_at``  after which a host refuses it (``DEFAULT_EXPIRES`` later:
                the controller re-signs while a rollout runs, ``hotload fleet
                resign`` otherwise)
``signature``   Ed25519 over ``DESIRED_CONTEXT`` and the canonical JSON of
                the six fields above and the rules (each rule's digest binds
                the build's bytes: a host checks the SHA-256 of what it fetches)
``key``         the signer's public key (hex), for messages only: a host
                verifies with the key it trusts, never with this one

Keys: an Ed25519 private key in a PEM file (``hotload fleet keygen``) signs;
hosts trust its public key.  For the embedded single-machine fleet a key pair
is made on first use in the user's state directory, beside the embedded
database (``$XDG_STATE_HOME/hotload/fleet-key.pem``, mode 0600, and
``fleet-key.pub``), and the hosts of that user read the public key from
there.  A key file (or its directory) owned by another user, or a private key
that group or others can read (a public key they can write), is refused.
"""

from __future__ import annotations

import json
import os
import re
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._errors import ConfigError, FleetError
from .._platform import dirlock
from ._schema import Rule, rules_json

DESIRED_CONTEXT = b"hotload-fleet-desired-v1\n"
BUILD_CONTEXT = b"hotload-fleet-v1\n"
DEFAULT_EXPIRES = 7 * 24 * 3600.0  # seconds a signed decision stays valid
PRIVATE_NAME = "fleet-key.pem"
PUBLIC_NAME = "fleet-key.pub"
SIGN_KEY_ENV = "HOTLOAD_FLEET_SIGN_KEY"
PUBLIC_KEY_ENV = "HOTLOAD_FLEET_PUBLIC_KEY"

_SIGNATURE = re.compile(r"[0-9a-f]{128}")
_HEX_KEY = re.compile(r"[0-9a-fA-F]{64}")


# ---- the decision ----------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    """A desired-state record as a host judges it."""

    plugin: str
    rev: int
    revision: int | None
    rules: tuple[Rule, ...]
    signed_at: float
    expires_at: float
    signature: str | None  # None: unsigned

    @property
    def order(self) -> tuple[int, float]:
        """Newer decisions sort higher: the rev, then (a re-signature of the
        same rev) the time it was signed."""
        return (self.rev, self.signed_at)

    def message(self) -> bytes:
        return signed_fields_message(
            self.plugin,
            self.rev,
            self.revision,
            list(self.rules),
            self.signed_at,
            self.expires_at,
        )


def signed_fields_message(
    plugin: str,
    rev: int,
    revision: int | None,
    rules: Iterable[Rule],
    signed_at: float,
    expires_at: float,
) -> bytes:
    """What the operator signs: the context and the canonical JSON (sorted
    keys, no spaces) of the decision's fields."""
    fields = {
        "plugin": plugin,
        "rev": rev,
        "revision": revision,
        "rules": rules_json(rules),
        "signed_at": signed_at,
        "expires_at": expires_at,
    }
    return DESIRED_CONTEXT + json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


def sign_decision(
    key: Any,
    plugin: str,
    rev: int,
    revision: int | None,
    rules: Iterable[Rule],
    *,
    expires: float = DEFAULT_EXPIRES,
    now: float | None = None,
) -> dict[str, Any]:
    """The signed fields to put in a desired-state record."""
    from cryptography.hazmat.primitives import serialization

    if expires <= 0:
        raise FleetError(f"a decision's expiry must be > 0 seconds, not {expires!r}")
    signed_at = round(time.time() if now is None else now, 3)
    expires_at = round(signed_at + expires, 3)
    msg = signed_fields_message(plugin, rev, revision, rules, signed_at, expires_at)
    pub = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {
        "plugin": plugin,
        "revision": revision,
        "signed_at": signed_at,
        "expires_at": expires_at,
        "signature": key.sign(msg).hex(),
        "key": pub.hex(),
    }


ROLLOUT_CONTEXT = b"hotload rollout record v1\x00"


def _rollout_message(rec: dict[str, Any]) -> bytes:
    body = {k: v for k, v in rec.items() if k != "seal"}
    return ROLLOUT_CONTEXT + json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def seal_rollout(key: Any, rec: dict[str, Any]) -> None:
    """Sign a rollout record (``rec["seal"]``): a controller that resumes or
    aborts it later signs decisions from its fields (the build, the rules to
    go back to), so they must be the ones a controller wrote, not a Redis
    writer's."""
    rec["seal"] = key.sign(_rollout_message(rec)).hex()


def signature_holds(public_key: Any, signature: object, message: bytes) -> bool:
    """Whether ``signature`` (hex) is ``public_key``'s over ``message``: the
    one check behind every signed record (decisions, release plans, the
    rollout record's seal); anything malformed is simply not a signature."""
    from cryptography.exceptions import InvalidSignature

    if not isinstance(signature, str):
        return False
    try:
        public_key.verify(bytes.fromhex(signature), message)
    except (ValueError, InvalidSignature):
        return False
    return True


def check_rollout_seal(public_key: Any, rec: dict[str, Any], plugin: str) -> None:
    """``FleetError`` unless ``rec`` carries a controller's seal by this key."""
    if not signature_holds(public_key, rec.get("seal"), _rollout_message(rec)):
        raise FleetError(
            f"{plugin}: the rollout record in Redis is not sealed by this fleet's signing key "
            f"(written by something other than a controller: refusing to sign decisions from "
            f"it; `hotload fleet rollback` puts the fleet on a signed revision)"
        ) from None


def decision(rec: dict[str, Any], plugin: str, rev: int, rules: list[Rule]) -> Decision:
    """The signed fields of a desired-state record (already checked by
    ``parse_desired_record``), checked; an unsigned record has no signature."""
    where = f"desired state of {plugin}"
    sig = rec.get("signature")
    if sig is None:
        return Decision(plugin, rev, None, tuple(rules), 0.0, 0.0, None)
    if not isinstance(sig, str) or not _SIGNATURE.fullmatch(sig):
        raise FleetError(f"{where}: signature {sig!r:.40} is not 128 hex digits")
    named = rec.get("plugin")
    if not isinstance(named, str):
        raise FleetError(f"{where}: a signed record names no plugin")
    revision = rec.get("revision")
    if revision is not None and (not isinstance(revision, int) or isinstance(revision, bool)):
        raise FleetError(f"{where}: revision {revision!r:.40} is not an integer")
    times = []
    for field in ("signed_at", "expires_at"):
        value = rec.get(field)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise FleetError(f"{where}: {field} {value!r:.40} is not a time")
        times.append(value)
    return Decision(named, rev, revision, tuple(rules), times[0], times[1], sig)


def verify_decision(public_key: Any, d: Decision, plugin: str, *, now: float | None = None) -> None:
    """Raise ``FleetError`` unless ``d`` is signed by ``public_key``, for
    ``plugin``, and not expired."""
    where = f"desired state of {plugin}"
    if d.signature is None:
        raise FleetError(
            f"{where}: not signed; this host acts only on decisions signed with its fleet "
            f"key (an unsigned fleet is Host(fleet_insecure=True) on every host)"
        )
    if d.plugin != plugin:
        raise FleetError(
            f"{where}: the record is signed for plugin {d.plugin!r}: a copied record, refused"
        )
    if not signature_holds(public_key, d.signature, d.message()):
        raise FleetError(
            f"{where}: rev {d.rev}: the signature does not verify with this host's fleet key "
            f"(signed by another key, or changed after it was signed), refused"
        )
    now = time.time() if now is None else now
    if d.expires_at <= now:
        raise FleetError(
            f"{where}: rev {d.rev} expired at {_when(d.expires_at)} (signed {_when(d.signed_at)}); "
            f"the operator re-signs it: hotload fleet resign {plugin}"
        )


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


# ---- a build's signature (publish --sign-key): name and digest -------------------------


def signed_message(name: str, digest: str) -> bytes:
    """What ``publish --sign-key`` signs in a build's metadata: the plugin
    name and its digest.  Hosts act on signed decisions, which name the
    digest; this signature says who published the bytes."""
    return BUILD_CONTEXT + f"{name}\n{digest}".encode()


# ---- key files ---------------------------------------------------------------------------


def key_dir() -> Path:
    """The state directory of this user's embedded fleet, where its key pair lives."""
    from ._connection import default_db

    return default_db().parent


def check_key_file(path: Path, *, private: bool, what: str | None = None) -> None:
    """Refuse a key file that another user owns or could have changed (or, for
    a private key, could read), or that sits in a directory they could write."""
    if not hasattr(os, "getuid"):  # Windows: the ACLs of the profile directory guard it
        return
    uid = os.getuid()
    what = what or ("fleet private key" if private else "fleet public key")
    for node, is_file in ((path, True), (path.parent, False)):
        try:
            st = os.lstat(node) if is_file else os.stat(node)
        except OSError as exc:
            raise FleetError(f"{path}: cannot read the {what}: {exc.strerror}") from None
        if is_file and not stat.S_ISREG(st.st_mode):
            raise FleetError(f"{path}: the {what} is not a regular file (a symlink?)")
        owners = (uid,) if private and is_file else (uid, 0)
        if st.st_uid not in owners:
            raise FleetError(
                f"{path}: refusing the {what}: {node} is owned by uid {st.st_uid}, "
                f"not by you (uid {uid})"
            )
        mode = stat.S_IMODE(st.st_mode)
        loose = 0o077 if private and is_file else 0o022
        if mode & loose:
            raise FleetError(
                f"{path}: refusing the {what}: {node} has mode {mode:o}; another user "
                f"could {'read' if private and is_file else 'replace'} it "
                f"(chmod {'600' if private and is_file else 'go-w'} {node})"
            )


def load_private_key(key: Any) -> Any:
    """An Ed25519 private key: the object, PEM bytes, or a PEM file's path
    (checked with ``check_key_file``)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    if isinstance(key, Ed25519PrivateKey):
        return key
    if isinstance(key, (str, os.PathLike)):
        check_key_file(Path(key), private=True)
        pem = Path(key).read_bytes()
    else:
        pem = key
    try:
        obj = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise FleetError(f"signing key {key!r:.80}: not a PEM private key ({exc})") from None
    if not isinstance(obj, Ed25519PrivateKey):
        raise FleetError(f"signing key {key!r:.80}: not an Ed25519 private key")
    return obj


def load_public_key(key: Any, what: str = "fleet_public_key") -> Any:
    """An Ed25519 public key: the object, 64 hex digits, PEM bytes, or the
    path of a file holding PEM or 64 hex digits (checked with
    ``check_key_file``: a file others could replace is a ``FleetError``).
    A directory, a missing file or junk is a ``ConfigError`` naming the
    option, the file and the cause."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    if isinstance(key, Ed25519PublicKey):
        return key
    if isinstance(key, str) and _HEX_KEY.fullmatch(key):
        return Ed25519PublicKey.from_public_bytes(bytes.fromhex(key))
    if isinstance(key, str) and key.startswith("-----BEGIN"):
        key = key.encode()
    if isinstance(key, (str, os.PathLike)):
        path = Path(key)
        if path.is_dir():
            raise ConfigError(f"{what} {path}: is a directory, not a key file")
        if not path.exists():
            raise ConfigError(f"{what} {path}: no such file")
        check_key_file(path, private=False)
        pem = path.read_bytes()
        if _HEX_KEY.fullmatch(pem.strip().decode("latin-1")):
            return Ed25519PublicKey.from_public_bytes(bytes.fromhex(pem.strip().decode()))
        where = str(path)
    elif isinstance(key, (bytes, bytearray)):
        pem, where = bytes(key), f"{bytes(key)!r:.40}"
    else:
        raise ConfigError(f"{what}: a PEM file's path, PEM bytes or 64 hex digits, not {key!r:.40}")
    try:
        obj = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        cause = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"{what} {where}: not a PEM public key ({cause})") from None
    if not isinstance(obj, Ed25519PublicKey):
        raise ConfigError(f"{what} {where}: not an Ed25519 public key")
    return obj


def public_hex(key: Any) -> str:
    from cryptography.hazmat.primitives import serialization

    pub = key.public_key() if hasattr(key, "public_key") else key
    return str(pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex())


def write_private_key(path: Path) -> Any:
    """A new Ed25519 key in a new PEM file (mode 0600; an existing file is
    an error); returns the key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    return key


def local_signing_key(directory: Path | None = None) -> Any:
    """The embedded fleet's private key (``fleet-key.pem`` in ``directory``,
    default the state directory), made with its ``fleet-key.pub`` the first
    time one is asked for (under a lock: processes starting at once make one)."""
    d = directory if directory is not None else key_dir()
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    private, public = d / PRIVATE_NAME, d / PUBLIC_NAME
    if not private.exists():
        try:
            fd = dirlock.wait_lock(d / "fleet-key.lock", timeout=30.0)
        except OSError as exc:
            raise FleetError(f"{d}: cannot take the fleet key's lock: {exc}") from None
        try:
            if not private.exists():
                tmp = d / f".{PRIVATE_NAME}.{os.getpid()}"
                tmp.unlink(missing_ok=True)
                key = write_private_key(tmp)
                _write_public(public, key)
                os.replace(tmp, private)  # last: a private key means the pair is there
        finally:
            dirlock.release(fd)
    key = load_private_key(private)
    if not public.exists():
        _write_public(public, key)
    return key


def _write_public(path: Path, key: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    with os.fdopen(fd, "w") as fh:
        fh.write(public_hex(key) + "\n")
    os.replace(tmp, path)


def local_public_key(directory: Path | None = None) -> Any | None:
    """The embedded fleet's public key (``fleet-key.pub``), or None while
    nothing made the pair yet (no publish on this machine so far)."""
    d = directory if directory is not None else key_dir()
    path = d / PUBLIC_NAME
    if not path.exists():
        return None
    return load_public_key(path)
