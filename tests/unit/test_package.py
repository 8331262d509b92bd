import subprocess
import sys

import metalab


def test_public_api_is_explicit_and_resolves():
    for name in metalab.__all__:
        assert getattr(metalab, name) is not None, name
    assert "maml" in metalab.names() and "protonet" in metalab.names()


def test_import_does_not_pull_optional_stacks():
    code = ("import sys, metalab; heavy = {'gymnasium', 'mujoco', 'matplotlib', 'metaworld', 'tensorboard'}; "
            "print(sorted(heavy & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
