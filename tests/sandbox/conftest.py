from tests.sandbox.fixtures import (
    any_sandbox_fixture,
    sandbox_fixture,
    sandbox_registry_fixture,
)

__all__ = ["any_sandbox_fixture", "sandbox_fixture", "sandbox_registry_fixture"]
