"""pytest plugin for the onedrive-syncctl suites run by meson (loaded with -p): a run in which
nothing ran — every test skipped, or none collected because the module skipped itself — exits
77, meson's "skipped", instead of passing (0) or failing (5)."""

import pytest

MESON_SKIP = 77


class _Counts:
    passed = failed = skipped = 0


_counts = _Counts()


def pytest_runtest_logreport(report):
    if report.when == "call" and report.passed:
        _counts.passed += 1
    elif report.failed:
        _counts.failed += 1
    elif report.skipped:
        _counts.skipped += 1


def pytest_collectreport(report):
    if report.skipped:
        _counts.skipped += 1
    elif report.failed:
        _counts.failed += 1


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
    if _counts.failed == 0 and _counts.passed == 0 and exitstatus in (0, 5):
        session.exitstatus = MESON_SKIP
