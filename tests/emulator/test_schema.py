"""CRD schema admission: pruning, defaulting and validation with kube-apiserver's field paths and wording."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kube_emulator.schema import (
    Cause,
    admit,
    apply_defaults,
    invalid_status,
    message_for,
    prune,
    unknown_fields,
    validate,
)

VM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["spec"],
    "properties": {
        "apiVersion": {"type": "string"},
        "kind": {"type": "string"},
        "metadata": {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20}}},
        "spec": {
            "type": "object",
            "required": ["nodeName", "cpu"],
            "properties": {
                "nodeName": {"type": "string", "minLength": 1},
                "running": {"type": "boolean", "default": True},
                "cpu": {
                    "type": "object",
                    "properties": {
                        "cores": {"type": "integer", "minimum": 1, "maximum": 64, "default": 1},
                        "model": {"type": "string", "enum": ["host-passthrough", "host-model"]},
                    },
                },
                "memory": {"type": "string", "pattern": "^[0-9]+(Mi|Gi)$", "default": "512Mi"},
                "disks": {
                    "type": "array",
                    "maxItems": 16,
                    "x-kubernetes-list-type": "map",
                    "x-kubernetes-list-map-keys": ["name"],
                    "items": {
                        "type": "object",
                        "required": ["name"],
                        "properties": {
                            "name": {"type": "string"},
                            "bus": {"type": "string", "enum": ["virtio", "sata", "scsi"], "default": "virtio"},
                            "size": {"x-kubernetes-int-or-string": True},
                        },
                    },
                },
                "tags": {"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "string"}},
                "labels": {"type": "object", "additionalProperties": {"type": "string", "maxLength": 5}},
                "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                "template": {
                    "type": "object",
                    "x-kubernetes-embedded-resource": True,
                    "properties": {"spec": {"type": "object", "properties": {"a": {"type": "string"}}}},
                },
                "note": {"type": "string", "nullable": True},
            },
        },
        "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
    },
}


def vm(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"nodeName": "node-1", "cpu": {"cores": 2}}
    base.update(spec)
    return {"apiVersion": "virt.libvirt-operator.dev/v1alpha1", "kind": "VirtualMachine",
            "metadata": {"name": "vm"}, "spec": base}  # fmt: skip


def causes_of(obj: Any, schema: dict[str, Any] = VM_SCHEMA) -> list[tuple[str, str, str]]:
    return [(c.field, c.reason, c.message) for c in validate(schema, obj)]


# --- pruning ----------------------------------------------------------------------------------------


def test_prune_drops_fields_the_schema_does_not_declare() -> None:
    obj = vm(junk=1, cpu={"cores": 2, "sockets": 1})
    obj["unknownTop"] = True
    pruned = prune(VM_SCHEMA, obj)
    assert "junk" not in pruned["spec"]
    assert pruned["spec"]["cpu"] == {"cores": 2}
    assert "unknownTop" not in pruned


def test_prune_keeps_api_version_kind_and_metadata_at_the_root_untouched() -> None:
    obj = vm()
    obj["metadata"] = {"name": "vm", "labels": {"a": "b"}, "finalizers": ["x"]}
    pruned = prune({"type": "object", "properties": {"spec": {"type": "object"}}}, obj)
    assert pruned["apiVersion"] == obj["apiVersion"]
    assert pruned["kind"] == obj["kind"]
    assert pruned["metadata"] == obj["metadata"]


def test_prune_leaves_its_input_unchanged() -> None:
    obj = vm(junk=1)
    before = copy.deepcopy(obj)
    prune(VM_SCHEMA, obj)
    assert obj == before


def test_prune_keeps_unknown_fields_under_preserve_unknown_fields() -> None:
    obj = vm(extra={"anything": {"deep": [1, 2]}})
    obj["status"] = {"phase": "Running", "whatever": 1}
    pruned = prune(VM_SCHEMA, obj)
    assert pruned["spec"]["extra"] == {"anything": {"deep": [1, 2]}}
    assert pruned["status"] == {"phase": "Running", "whatever": 1}


def test_prune_still_prunes_declared_children_of_a_preserving_object() -> None:
    schema = {
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": True,
        "properties": {"known": {"type": "object", "properties": {"a": {"type": "string"}}}},
    }
    assert prune(schema, {"known": {"a": "x", "b": "y"}, "other": 1}) == {"known": {"a": "x"}, "other": 1}


def test_prune_descends_into_array_items_and_additional_properties() -> None:
    obj = vm(disks=[{"name": "root", "cache": "none"}], labels={"a": "b"})
    schema = {
        "type": "object",
        "properties": {
            "m": {"type": "object", "additionalProperties": {"type": "object", "properties": {"x": {"type": "string"}}}}
        },
    }
    assert prune(VM_SCHEMA, obj)["spec"]["disks"] == [{"name": "root"}]
    assert prune(schema, {"m": {"k": {"x": "1", "y": "2"}}}) == {"m": {"k": {"x": "1"}}}


def test_prune_empties_an_object_schema_without_properties() -> None:
    schema = {"type": "object", "properties": {"o": {"type": "object"}}}
    assert prune(schema, {"o": {"a": 1}}) == {"o": {}}


def test_prune_keeps_the_type_fields_of_an_embedded_resource() -> None:
    template = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"a": "x", "b": "y"}}
    pruned = prune(VM_SCHEMA, vm(template=template))
    assert pruned["spec"]["template"] == {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p"},
        "spec": {"a": "x"},
    }


def test_unknown_fields_lists_the_paths_pruning_drops() -> None:
    obj = vm(junk=1, disks=[{"name": "root"}, {"name": "data", "cache": "none"}])
    obj["top"] = 1
    assert unknown_fields(VM_SCHEMA, obj) == ["spec.junk", "spec.disks[1].cache", "top"]


# --- defaulting ------------------------------------------------------------------------------------


def test_defaults_fill_missing_fields_at_every_depth() -> None:
    defaulted = apply_defaults(VM_SCHEMA, vm(cpu={}, disks=[{"name": "root"}, {"name": "d", "bus": "sata"}]))
    spec = defaulted["spec"]
    assert spec["running"] is True
    assert spec["memory"] == "512Mi"
    assert spec["cpu"] == {"cores": 1}
    assert spec["disks"] == [{"name": "root", "bus": "virtio"}, {"name": "d", "bus": "sata"}]


def test_defaults_do_not_overwrite_given_values_or_create_absent_objects() -> None:
    defaulted = apply_defaults(VM_SCHEMA, vm(running=False, memory="1Gi"))
    assert defaulted["spec"]["running"] is False
    assert defaulted["spec"]["memory"] == "1Gi"
    assert "cpu" in defaulted["spec"] and "disks" not in defaulted["spec"]


def test_defaults_are_themselves_defaulted_further_down() -> None:
    schema = {
        "type": "object",
        "properties": {
            "o": {"type": "object", "default": {}, "properties": {"x": {"type": "integer", "default": 3}}},
        },
    }
    assert apply_defaults(schema, {}) == {"o": {"x": 3}}


def test_a_null_in_a_non_nullable_field_takes_the_default_or_is_dropped() -> None:
    defaulted = apply_defaults(VM_SCHEMA, vm(memory=None, nodeName=None, note=None))
    assert defaulted["spec"]["memory"] == "512Mi"
    assert "nodeName" not in defaulted["spec"]
    assert defaulted["spec"]["note"] is None  # nullable: kept


def test_defaults_apply_to_additional_properties_and_array_items() -> None:
    schema = {
        "type": "object",
        "properties": {
            "m": {
                "type": "object",
                "additionalProperties": {"type": "object", "properties": {"x": {"type": "integer", "default": 1}}},
            },
            "l": {"type": "array", "items": {"type": "string", "default": "d"}},
        },
    }
    assert apply_defaults(schema, {"m": {"a": {}, "b": None}, "l": [None, "x"]}) == {
        "m": {"a": {"x": 1}},
        "l": ["d", "x"],
    }


def test_defaults_leave_root_metadata_alone_and_the_input_unchanged() -> None:
    schema = {
        "type": "object",
        "properties": {"metadata": {"type": "object", "properties": {"name": {"type": "string", "default": "x"}}}},
    }
    obj: dict[str, Any] = {"metadata": {}}
    assert apply_defaults(schema, obj) == {"metadata": {}}
    assert obj == {"metadata": {}}


# --- validation ------------------------------------------------------------------------------------


def test_a_valid_object_has_no_causes() -> None:
    obj = vm(disks=[{"name": "root", "bus": "sata", "size": "10Gi"}, {"name": "d", "size": 3}], memory="2Gi")
    assert validate(VM_SCHEMA, obj) == []


def test_missing_required_fields_are_reported_by_path() -> None:
    assert causes_of({"apiVersion": "x/v1", "kind": "VirtualMachine", "metadata": {}}) == [
        ("spec", "FieldValueRequired", "Required value")
    ]
    obj = vm()
    del obj["spec"]["cpu"], obj["spec"]["nodeName"]
    assert causes_of(obj) == [
        ("spec.nodeName", "FieldValueRequired", "Required value"),
        ("spec.cpu", "FieldValueRequired", "Required value"),
    ]


def test_a_wrong_type_reads_as_kube_apiserver_writes_it() -> None:
    cpu = {"type": "object", "properties": {"cores": {"type": "string"}}}
    schema = {"type": "object", "properties": {"spec": {"type": "object", "properties": {"cpu": cpu}}}}
    assert causes_of({"spec": {"cpu": {"cores": 2}}}, schema) == [
        (
            "spec.cpu.cores",
            "FieldValueTypeInvalid",
            'Invalid value: "integer": spec.cpu.cores in body must be of type string: "integer"',
        )
    ]


@pytest.mark.parametrize(
    ("declared", "value", "ok"),
    [
        ("integer", 3, True),
        ("integer", 3.0, True),  # an integral float is an integer, as in kube-openapi
        ("integer", 3.5, False),
        ("integer", True, False),
        ("number", 3, True),
        ("number", 2.5, True),
        ("string", "x", True),
        ("string", 1, False),
        ("boolean", False, True),
        ("boolean", "true", False),
        ("object", {}, True),
        ("object", [], False),
        ("array", [], True),
        ("array", {}, False),
    ],
)
def test_type_checks(declared: str, value: Any, ok: bool) -> None:
    assert (validate({"type": declared}, value, path="spec.x") == []) is ok


def test_null_is_rejected_unless_nullable() -> None:
    assert causes_of(vm(nodeName=None)) == [
        (
            "spec.nodeName",
            "FieldValueTypeInvalid",
            'Invalid value: "null": spec.nodeName in body must be of type string: "null"',
        )
    ]
    assert causes_of(vm(note=None)) == []


def test_enum_violation_lists_the_supported_values() -> None:
    assert causes_of(vm(disks=[{"name": "root", "bus": "foo"}])) == [
        (
            "spec.disks[0].bus",
            "FieldValueNotSupported",
            'Unsupported value: "foo": supported values: "virtio", "sata", "scsi"',
        )
    ]


def test_enum_of_numbers_compares_by_value_and_quotes_members() -> None:
    schema = {"type": "integer", "enum": [1, 2]}
    assert validate(schema, 2) == [] and validate(schema, 2.0) == []
    assert [c.message for c in validate(schema, 3, path="n")] == ['Unsupported value: 3: supported values: "1", "2"']


def test_pattern_violation_quotes_the_pattern() -> None:
    assert causes_of(vm(memory="12Xi")) == [
        (
            "spec.memory",
            "FieldValueInvalid",
            "Invalid value: \"12Xi\": spec.memory in body should match '^[0-9]+(Mi|Gi)$'",
        )
    ]


def test_pattern_is_searched_not_fully_matched() -> None:
    schema = {"type": "string", "pattern": "[0-9]+"}
    assert validate(schema, "abc123def") == []
    assert validate(schema, "abc") != []


def test_pattern_dollar_means_end_of_text_as_in_go() -> None:
    schema = {"type": "string", "pattern": "^[a-z]+$"}
    assert validate(schema, "abc") == []
    assert validate(schema, "abc\n") != []  # Python's $ alone would accept the trailing newline


def test_pattern_classes_are_ascii_as_in_go() -> None:
    assert validate({"type": "string", "pattern": r"^\d+$"}, "١٢") != []  # Arabic-Indic digits


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0, "Invalid value: 0: spec.cpu.cores in body should be greater than or equal to 1"),
        (65, "Invalid value: 65: spec.cpu.cores in body should be less than or equal to 64"),
    ],
)
def test_bounds_read_as_kube_apiserver_writes_them(value: int, message: str) -> None:
    assert causes_of(vm(cpu={"cores": value})) == [("spec.cpu.cores", "FieldValueInvalid", message)]


def test_exclusive_and_fractional_bounds() -> None:
    schema = {"type": "number", "minimum": 0.5, "exclusiveMinimum": True, "maximum": 1e6, "exclusiveMaximum": True}
    assert [c.message for c in validate(schema, 0.5, path="x")] == [
        "Invalid value: 0.5: x in body should be greater than 0.5"
    ]
    assert [c.message for c in validate(schema, 1e6, path="x")] == [
        "Invalid value: 1e+06: x in body should be less than 1e+06"
    ]
    assert validate(schema, 0.75) == []


def test_multiple_of() -> None:
    schema = {"type": "integer", "multipleOf": 4}
    assert validate(schema, 8) == []
    assert [c.message for c in validate(schema, 6, path="x")] == [
        "Invalid value: 6: x in body should be a multiple of 4"
    ]


def test_string_length_limits() -> None:
    assert causes_of(vm(nodeName="")) == [
        (
            "spec.nodeName",
            "FieldValueInvalid",
            'Invalid value: "": spec.nodeName in body should be at least 1 chars long',
        )
    ]
    assert causes_of(vm(labels={"k": "toolong"})) == [
        ("spec.labels.k", "FieldValueTooLong", "Too long: may not be more than 5 bytes")
    ]


def test_item_count_limits() -> None:
    disks = [{"name": f"d{i}"} for i in range(17)]
    assert causes_of(vm(disks=disks)) == [
        ("spec.disks", "FieldValueTooMany", "Too many: 17: must have at most 16 items")
    ]
    few = validate({"type": "array", "minItems": 2}, [1], path="spec.l")
    assert [(c.field, c.message) for c in few] == [
        ("spec.l", "Invalid value: 1: spec.l in body should have at least 2 items")
    ]


def test_property_count_limits() -> None:
    schema = {"type": "object", "minProperties": 1, "maxProperties": 2}
    assert [c.message for c in validate(schema, {}, path="m")] == [
        "Invalid value: 0: m in body should have at least 1 properties"
    ]
    assert [(c.reason, c.message) for c in validate(schema, {"a": 1, "b": 2, "c": 3}, path="m")] == [
        ("FieldValueTooMany", "Too many: 3: must have at most 2 items")
    ]


def test_additional_properties_false_forbids_unknown_keys() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": False}
    assert [(c.field, c.message) for c in validate(schema, {"a": "x", "b": 1}, path="spec")] == [
        ("spec", 'Invalid value: "b": spec.b in body is a forbidden property')
    ]


def test_int_or_string_accepts_both_and_names_both_types() -> None:
    assert causes_of(vm(disks=[{"name": "a", "size": 10}, {"name": "b", "size": "10Gi"}])) == []
    assert causes_of(vm(disks=[{"name": "a", "size": True}])) == [
        ("spec.disks[0].size", "FieldValueTypeInvalid",
         'Invalid value: "boolean": spec.disks[0].size in body must be of type integer,string: "boolean"')
    ]  # fmt: skip


def test_preserve_unknown_fields_without_type_accepts_anything() -> None:
    assert causes_of(vm(extra={"x": [1, "a", None]})) == []


def test_list_map_duplicate_keys_are_reported_at_the_second_item() -> None:
    disks = [{"name": "root"}, {"name": "root", "bus": "sata"}, {"name": "root"}, {"name": "data"}]
    assert causes_of(vm(disks=disks)) == [
        ("spec.disks[1]", "FieldValueDuplicate", 'Duplicate value: {"name":"root"}')
    ]


def test_list_map_with_several_keys_compares_the_key_tuple() -> None:
    schema = {
        "type": "array",
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["port", "protocol"],
        "items": {"type": "object", "properties": {"port": {"type": "integer"}, "protocol": {"type": "string"}}},
    }
    ports = [{"port": 80, "protocol": "TCP"}, {"port": 80, "protocol": "UDP"}, {"protocol": "TCP", "port": 80}]
    assert [(c.field, c.message) for c in validate(schema, ports, path="spec.ports")] == [
        ("spec.ports[2]", 'Duplicate value: {"port":80,"protocol":"TCP"}')
    ]


def test_list_set_duplicates_are_reported() -> None:
    assert causes_of(vm(tags=["a", "b", "a"])) == [("spec.tags[2]", "FieldValueDuplicate", 'Duplicate value: "a"')]


def test_list_set_tells_numbers_of_different_json_types_apart() -> None:
    schema = {"type": "array", "x-kubernetes-list-type": "set"}
    assert validate(schema, [1, 1.5, True, "1"], path="s") == []
    assert [c.field for c in validate(schema, [1, 2, 1], path="s")] == ["s[2]"]


def test_embedded_resources_need_api_version_and_kind() -> None:
    causes = causes_of(vm(template={"spec": {}}))
    assert causes == [
        ("spec.template.apiVersion", "FieldValueRequired", "Required value: must not be empty"),
        ("spec.template.kind", "FieldValueRequired", "Required value: must not be empty"),
    ]


def test_metadata_name_constraints_of_the_schema_are_checked() -> None:
    obj = vm()
    obj["metadata"]["name"] = "x" * 21
    assert causes_of(obj) == [("metadata.name", "FieldValueTooLong", "Too long: may not be more than 20 bytes")]


def test_errors_come_out_in_kube_apiserver_order() -> None:
    obj = vm(cpu={"cores": 0}, memory="1", disks=[{"name": "a"}, {"name": "a"}])
    del obj["spec"]["nodeName"]
    assert [c.field for c in validate(VM_SCHEMA, obj)] == [
        "spec.cpu.cores",
        "spec.memory",
        "spec.nodeName",
        "spec.disks[1]",
    ]


def test_path_prefixes_fields_and_messages() -> None:
    schema = {"type": "object", "properties": {"cores": {"type": "integer", "maximum": 4}}}
    assert [str(c) for c in validate(schema, {"cores": 5}, path="spec.cpu")] == [
        "spec.cpu.cores: Invalid value: 5: spec.cpu.cores in body should be less than or equal to 4"
    ]


@pytest.mark.parametrize(
    ("fmt", "good", "bad"),
    [
        ("uuid", "6f1c2a3e-1b2c-4d5e-8f90-123456789abc", "not-a-uuid"),
        ("ipv4", "10.0.0.1", "10.0.0.256"),
        ("ipv6", "fe80::1", "10.0.0.1"),
        ("cidr", "10.0.0.0/8", "10.0.0.0"),
        ("date", "2024-02-29", "2023-02-29"),
        ("date-time", "2024-01-01T10:00:00Z", "yesterday"),
        ("byte", "aGVsbG8=", "***"),
        ("made-up-format", "anything", None),
    ],
)
def test_supported_formats_are_checked_and_others_ignored(fmt: str, good: str, bad: str | None) -> None:
    schema = {"type": "string", "format": fmt}
    assert validate(schema, good, path="x") == []
    if bad is not None:
        assert [(c.reason, c.message) for c in validate(schema, bad, path="x")] == [
            ("FieldValueTypeInvalid", f'Invalid value: "{bad}": x in body must be of type {fmt}: "{bad}"')
        ]


def test_any_of_reports_the_composite_error_and_the_closest_alternative() -> None:
    schema = {"type": "object", "anyOf": [{"required": ["a"]}, {"required": ["b"]}]}
    assert validate(schema, {"a": 1}) == []
    assert [(c.field, c.message) for c in validate(schema, {}, path="spec")] == [
        ("<nil>", 'Invalid value: "": "spec" must validate at least one schema (anyOf)'),
        ("spec.a", "Required value"),
    ]


def test_one_of_needs_exactly_one_match() -> None:
    schema = {"oneOf": [{"minimum": 0}, {"maximum": 10}]}
    assert validate(schema, 20) == []
    assert [c.message for c in validate(schema, 5, path="n")] == [
        'Invalid value: "": "n" must validate one and only one schema (oneOf). Found 2 valid alternatives'
    ]


def test_all_of_and_not() -> None:
    all_of = {"allOf": [{"minimum": 0}, {"maximum": 10}]}
    assert [c.message for c in validate(all_of, 11, path="n")] == [
        "Invalid value: 11: n in body should be less than or equal to 10",
        'Invalid value: "": "n" must validate all the schemas (allOf)',
    ]
    negated = {"not": {"enum": ["forbidden"]}}
    assert validate(negated, "fine") == []
    assert [c.message for c in validate(negated, "forbidden", path="n")] == [
        'Invalid value: "": "n" must not validate the schema (not)'
    ]


def test_cel_validation_rules_are_ignored() -> None:
    schema = {"type": "object", "x-kubernetes-validations": [{"rule": "false", "message": "never"}]}
    assert validate(schema, {}) == []


def test_strings_in_messages_are_go_quoted() -> None:
    schema = {"type": "string", "enum": ["a"]}
    assert validate(schema, 'x"y\n', path="s")[0].message == 'Unsupported value: "x\\"y\\n": supported values: "a"'


# --- admission ---------------------------------------------------------------------------------------


def test_admit_prunes_then_defaults_then_validates() -> None:
    obj = vm(junk={"x": 1}, cpu={"cores": 0})
    admitted, causes = admit(VM_SCHEMA, obj)
    assert "junk" not in admitted["spec"]
    assert admitted["spec"]["memory"] == "512Mi"
    assert [c.field for c in causes] == ["spec.cpu.cores"]
    assert obj["spec"]["junk"] == {"x": 1}  # input untouched


def test_admit_validates_defaulted_values_and_accepts_a_good_object() -> None:
    admitted, causes = admit(VM_SCHEMA, vm())
    assert causes == []
    assert admitted["spec"]["running"] is True and admitted["metadata"] == {"name": "vm"}


def test_admit_rejects_a_non_object() -> None:
    with pytest.raises(TypeError, match="JSON object"):
        admit(VM_SCHEMA, [])  # type: ignore[arg-type]


# --- Status text ---------------------------------------------------------------------------------------


def test_message_for_lists_causes_as_kube_apiserver_does() -> None:
    causes = [
        Cause(
            "FieldValueInvalid",
            "Invalid value: 0: spec.cpu.cores in body should be greater than or equal to 1",
            "spec.cpu.cores",
        ),
        Cause("FieldValueRequired", "Required value", "spec.nodeName"),
        Cause("FieldValueRequired", "Required value", "spec.nodeName"),
    ]
    assert message_for("VirtualMachine", "x", causes, group="virt.libvirt-operator.dev") == (
        'VirtualMachine.virt.libvirt-operator.dev "x" is invalid: '
        "[spec.cpu.cores: Invalid value: 0: spec.cpu.cores in body should be greater than or equal to 1, "
        "spec.nodeName: Required value]"
    )


def test_message_for_a_single_cause_has_no_brackets() -> None:
    causes = [Cause("FieldValueRequired", "Required value", "spec")]
    assert message_for("VirtualMachine.virt.libvirt-operator.dev", "x", causes) == (
        'VirtualMachine.virt.libvirt-operator.dev "x" is invalid: spec: Required value'
    )
    assert message_for("Thing", "y", []) == 'Thing "y" is invalid'


def test_invalid_status_is_a_422_status_body() -> None:
    causes = [Cause("FieldValueRequired", "Required value", "spec")]
    status = invalid_status("VirtualMachine", "virt.libvirt-operator.dev", "x", causes)
    assert status["kind"] == "Status" and status["apiVersion"] == "v1"
    assert status["code"] == 422 and status["reason"] == "Invalid" and status["status"] == "Failure"
    assert status["details"] == {
        "name": "x",
        "kind": "VirtualMachine",
        "group": "virt.libvirt-operator.dev",
        "causes": [{"reason": "FieldValueRequired", "message": "Required value", "field": "spec"}],
    }
    assert status["message"].startswith('VirtualMachine.virt.libvirt-operator.dev "x" is invalid')


# --- properties ----------------------------------------------------------------------------------------

json_scalars = st.none() | st.booleans() | st.integers(-5, 100) | st.floats(allow_nan=False) | st.text(max_size=5)
json_keys = st.sampled_from(["spec", "cpu", "cores", "disks", "name", "nodeName", "x"])
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(json_keys, children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(json_values)
def test_admission_never_crashes_and_pruning_is_idempotent(value: Any) -> None:
    pruned = prune(VM_SCHEMA, value)
    assert prune(VM_SCHEMA, pruned) == pruned
    causes = validate(VM_SCHEMA, apply_defaults(VM_SCHEMA, pruned))
    assert all(isinstance(c, Cause) and c.field and c.message for c in causes)
    if isinstance(value, dict):
        _, admit_causes = admit(VM_SCHEMA, value)
        assert admit_causes == causes
