"""Loading, typed calls, descriptors and declared signatures."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from hotload import ABI_VERSION, DescriptorError, Host, LoadError, NotLoadedError, SignatureError

from conftest import mapped_images, versioned_copies


def test_load_calls_typed_exports_from_the_descriptor(
    host: Host, example_plugins: dict[str, Path]
) -> None:
    xp = host.load(example_plugins["double_xp"])
    assert "double_xp" in repr(xp) and host.current("double_xp").name == "double_xp"  # type: ignore[union-attr]
    assert xp.functions()["reward"] == "int64_t(int64_t, int32_t)"
    assert xp.reward(100, 3) == 200
    assert xp.reward(100, 10) == 210  # level bonus
    assert xp.grant_count() == 2
    loot = host.load(example_plugins["loot_drop"])
    assert loot.gem_value([5, 6, 7], 3) == 36  # pointer + length
    assert loot.rarity(9950, 0) == 3
    [info] = host.versions("double_xp")
    assert (info.seq, info.plugin_version, info.state) == (1, "1.0.0", "active")
    assert info.dlopen_count == 1 and info.dlclose_count == 0


def test_bad_arguments_are_signature_errors_naming_the_prototype(
    host: Host, example_plugins
) -> None:
    xp = host.load(example_plugins["double_xp"])
    with pytest.raises(
        SignatureError, match=r"double_xp\.reward: bad arguments for int64_t\(int64_t, int32_t\)"
    ):
        xp.reward("100", 3)
    with pytest.raises(SignatureError, match="does not fit 'int32_t'"):
        xp.reward(1, 2**40)
    with pytest.raises(TypeError, match="reward"):
        xp.reward(1)
    with pytest.raises(AttributeError, match="nope"):
        xp.nope()
    with pytest.raises(NotLoadedError, match="exports no function 'nope'.*reward"):
        xp["nope"]
    assert xp.grant_count() == 0  # nothing ran


def test_never_opens_the_source_path_and_copies_privately(host: Host, example_plugins) -> None:
    src = example_plugins["double_xp"]
    host.load(src)
    mapped = mapped_images(host.workdir)
    assert len(mapped) == 1
    with open("/proc/self/maps") as fh:
        assert str(src) not in fh.read()
    [info] = host.versions("double_xp")
    copy = Path(info.copy)
    assert copy.parent == host.workdir and str(copy) in mapped
    assert stat.S_IMODE(os.stat(host.workdir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(host.workdir.parent).st_mode) == 0o700
    assert copy.read_bytes() == src.read_bytes()


def test_identical_bytes_loaded_twice_are_two_images(host: Host, example_plugins) -> None:
    xp = host.load(example_plugins["double_xp"])
    xp.reward(1, 1)
    host.reload("double_xp")  # same bytes
    v1, v2 = host.versions("double_xp")
    assert v1.digest == v2.digest and v1.copy != v2.copy
    assert xp.grant_count() == 1  # state handed across, into a distinct image
    assert host.settle()
    assert [v.state for v in host.versions("double_xp")] == ["unloaded", "active"]


def test_library_without_descriptor_loads_with_declared_signatures(host: Host, cc) -> None:
    lib = cc(
        """
        #include <stdint.h>
        int64_t add(int64_t a, int64_t b) { return a + b; }
    """,
        "libfoo",
    )
    with pytest.raises(DescriptorError, match=r"libfoo\.so: no hotload descriptor.*signatures="):
        host.load(lib)
    foo = host.load(lib, name="foo", signatures={"add": "int64_t(int64_t, int64_t)"})
    assert foo.add(2, 40) == 42
    assert host.versions("foo")[0].plugin_version == "unversioned"
    assert versioned_copies(host.workdir)  # loaded from a copy like any plugin


def test_declared_signature_mismatch_names_function_and_both_prototypes(
    host: Host, example_plugins
) -> None:
    with pytest.raises(SignatureError) as err:
        host.load(example_plugins["double_xp"], signatures={"reward": "int64_t(int64_t, int64_t)"})
    msg = str(err.value)
    assert "double_xp.so" in msg and "reward" in msg
    assert "int64_t(int64_t, int64_t)" in msg and "int64_t(int64_t, int32_t)" in msg
    # declared prototypes that agree (whitespace, parameter names) are fine
    xp = host.load(
        example_plugins["double_xp"], signatures={"reward": "int64_t (int64_t base, int32_t lvl)"}
    )
    assert xp.reward(1, 0) == 2
    assert len(versioned_copies(host.workdir)) == 1  # the refused attempt left nothing


def test_other_abi_version_is_refused_with_both_numbers(host: Host, cc) -> None:
    lib = cc(
        r"""
        __attribute__((section(".hotload"), used))
        static const char rec[] = "hotload\x1f" "7" "\x1f" "plugin\x1f" "future\x1f" "9.0";
        int f(void) { return 1; }
    """,
        "future",
    )
    with pytest.raises(DescriptorError, match=rf"future\.so: .*hotload ABI 7.*ABI {ABI_VERSION}"):
        host.load(lib)
    assert not versioned_copies(host.workdir)


def test_unparsable_signature_in_plugin_names_file_and_function(host: Host, cc) -> None:
    lib = cc(
        """
        #define HOTLOAD_ALLOW_STRING_EXPORT  /* a prototype the compiler cannot check */
        #include <hotload.h>
        HOTLOAD_PLUGIN("weird", "1");
        HOTLOAD_API int f(int x) { return x; }
        HOTLOAD_EXPORT(f, "int(struct nowhere)");
    """,
        "weird",
    )
    with pytest.raises(SignatureError, match=r"weird\.so: cannot parse the C signature of f"):
        host.load(lib)


def test_export_missing_from_dynamic_symbols_is_a_load_error(host: Host, cc) -> None:
    lib = cc(
        """
        #include <hotload.h>
        HOTLOAD_PLUGIN("hidden", "1");
        static int f(int x) { return x; }          /* no HOTLOAD_API: not exported */
        HOTLOAD_EXPORT(f, int, (int));
    """,
        "hidden",
    )
    with pytest.raises(
        LoadError, match=r"hidden\.so: f is declared .* not in the library's dynamic symbol"
    ):
        host.load(lib)
    assert not versioned_copies(host.workdir)


def test_undefined_symbol_fails_at_load_time_not_first_call(host: Host, cc) -> None:
    lib = cc(
        """
        #include <hotload.h>
        HOTLOAD_PLUGIN("needy", "1");
        extern int hotload_test_missing_symbol(int);
        HOTLOAD_API int f(int x) { return hotload_test_missing_symbol(x); }
        HOTLOAD_EXPORT(f, int, (int));
    """,
        "needy",
    )
    with pytest.raises(
        LoadError, match=r"needy\.so: dlopen failed: .*undefined symbol: hotload_test_missing"
    ):
        host.load(lib)
    assert not versioned_copies(host.workdir)


def test_loading_the_same_plugin_twice_points_to_reload(host: Host, example_plugins) -> None:
    host.load(example_plugins["loot_drop"])
    with pytest.raises(Exception, match=r"already loaded; use reload\('loot_drop'\)"):
        host.load(example_plugins["loot_drop"])


def test_unload_stops_serving_and_unmaps(host: Host, example_plugins) -> None:
    loot = host.load(example_plugins["loot_drop"])
    f = loot.rarity
    host.unload("loot_drop")
    with pytest.raises(Exception, match="unloaded"):
        f(1, 1)
    assert host.settle()
    assert host.versions("loot_drop")[0].state == "unloaded"
    assert not mapped_images(host.workdir)


def test_pinned_batch_uses_one_version_and_blocks_its_unload(host: Host, xp_build) -> None:
    xp = host.load(xp_build(mult=2))
    with xp.pinned() as f:
        assert f.reward(10, 0) == 20
        xp_build(mult=3)
        host.reload("xp")
        assert xp.reward(10, 0) == 30  # routed calls see v2
        assert f.reward(10, 0) == 20  # the pinned batch stays on v1
        assert not host.settle(0.2)  # v1 cannot close while pinned
        assert host.versions("xp")[0].state == "draining"
    assert host.settle()
    assert host.versions("xp")[0].state == "unloaded"


def test_double_close_is_refused_and_counts_stay_honest(tmp_path: Path, example_plugins) -> None:
    from hotload._artifact import loader
    from hotload._artifact.workdir import WorkDir

    work = WorkDir(tmp_path / "w")
    try:
        source = str(example_plugins["loot_drop"])
        cand = loader.candidate(loader.read_source(source), source)
        opener = loader.Loader(work)
        image = opener.open(opener.stage(cand, 1), may_close=lambda c: True)
        assert (image.opens, image.closes) == (1, 0)
        opener.release(image)
        verdict = opener.verify_gone(image)
        assert verdict.gone and not verdict.loader_has and verdict.mapped_bytes == 0
        with pytest.raises(
            LoadError,
            match=r"loot_drop\.so: version copy .* is already closed "
            r"\(dlopen 1, dlclose 1\): refusing a double close",
        ):
            opener.release(image)
        assert (image.opens, image.closes) == (1, 1)
    finally:
        work.close()
