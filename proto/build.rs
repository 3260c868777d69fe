//! Generates the prost types of `schema/*.proto` with a vendored protoc, so a
//! fresh machine needs no protobuf compiler installed.

use std::io::Result;

/// Framework payloads that also have a JSON form (used by the JSON and text
/// listeners), and their byte fields, which travel as text in that form.
const JSON_MESSAGES: &[(&str, &[&str])] = &[
    ("LoginRequest", &["client_key"]),
    ("LoginReply", &["server_key"]),
    ("ResumeRequest", &["client_nonce"]),
    ("ResumeReply", &["server_nonce"]),
    ("GroupRequest", &[]),
    ("SendToUser", &["payload"]),
    ("SendToUsers", &["payload"]),
    ("SendToGroup", &["payload"]),
    ("Delivery", &["payload"]),
    ("SendResult", &[]),
    ("Kick", &[]),
    ("Error", &[]),
];

fn main() -> Result<()> {
    let protoc = protoc_bin_vendored::protoc_bin_path().map_err(std::io::Error::other)?;
    std::env::set_var("PROTOC", protoc);
    let mut config = prost_build::Config::new();
    for (message, byte_fields) in JSON_MESSAGES {
        let path = format!(".portcullis.client.v1.{message}");
        config.type_attribute(&path, "#[derive(serde::Serialize, serde::Deserialize)] #[serde(default)]");
        for field in *byte_fields {
            config.field_attribute(format!("{path}.{field}"), "#[serde(with = \"crate::framework::text_bytes\")]");
        }
    }
    // The encryption fields are left out of the JSON form when empty, so a
    // clear session's answers read as they always did.
    for field in
        ["LoginRequest.client_key", "LoginReply.server_key", "ResumeRequest.client_nonce", "ResumeReply.server_nonce"]
    {
        config.field_attribute(
            format!(".portcullis.client.v1.{field}"),
            "#[serde(skip_serializing_if = \"Vec::is_empty\")]",
        );
    }
    for field in ["LoginReply.cipher", "ResumeReply.cipher"] {
        config.field_attribute(
            format!(".portcullis.client.v1.{field}"),
            "#[serde(skip_serializing_if = \"String::is_empty\")]",
        );
    }
    config.compile_protos(&["schema/client.proto", "schema/link.proto"], &["schema"])?;
    // The admin and agent gRPC services, for the control plane and the
    // dataplane's agent (feature `grpc`, so clients of the wire protocol
    // alone do not build tonic).
    if std::env::var_os("CARGO_FEATURE_GRPC").is_some() {
        let out = std::path::PathBuf::from(std::env::var("OUT_DIR").map_err(std::io::Error::other)?);
        tonic_prost_build::configure()
            // For `portcullisctl --json`.
            .type_attribute(".portcullis.admin.v1", "#[derive(serde::Serialize)]")
            .file_descriptor_set_path(out.join("admin_descriptor.bin"))
            .compile_protos(&["schema/admin.proto"], &["schema"])?;
    }
    println!("cargo:rerun-if-changed=schema");
    Ok(())
}
