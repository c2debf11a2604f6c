//! Compiles `proto/` with tonic-prost-build, using the vendored `protoc` (no system install).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let protos = [
        "proto/navis/auth/v1/validator.proto",
        "proto/navis/auth/v1/admin.proto",
        "proto/navis/auth/v1/storage.proto",
    ];
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("navis_auth_descriptor.bin"))
        // Messages that carry a plaintext token get a redacting Debug in src/pb.rs instead.
        .skip_debug([
            ".navis.auth.v1.ValidateRequest",
            ".navis.auth.v1.CreateApiKeyResponse",
            ".navis.auth.v1.RotateApiKeyResponse",
            ".navis.auth.v1.OAuthTokens",
            ".navis.auth.v1.RefreshOAuthTokensRequest",
            ".navis.auth.v1.RevokeTokenRequest",
            ".navis.auth.v1.RevokeTokenRequest.target",
        ])
        .compile_with_config(config, &protos, &["proto"])?;
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    Ok(())
}
