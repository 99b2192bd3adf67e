//! A throwaway cluster CA for tests and benchmarks (rcgen): certificates like the node's
//! (`node/src/tls.rs`): SAN DNS [`PEER_TLS_SERVER_NAME`], server and client auth. Never used for
//! a real cluster, whose CA lives on disk.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

use super::{QuicTls, TransferError, PEER_TLS_SERVER_NAME};

pub(crate) struct DevCa {
    params: CertificateParams,
    key: KeyPair,
    cert_pem: String,
}

fn rcgen_err(context: &str) -> impl FnOnce(rcgen::Error) -> TransferError + '_ {
    move |e| TransferError::Tls {
        context: context.to_owned(),
        detail: e.to_string(),
    }
}

impl DevCa {
    pub fn new(name: &str) -> Result<DevCa, TransferError> {
        let mut params =
            CertificateParams::new(Vec::<String>::new()).map_err(rcgen_err("CA parameters"))?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().map_err(rcgen_err("generate the CA key"))?;
        let cert = params
            .self_signed(&key)
            .map_err(rcgen_err("self-sign the CA"))?;
        Ok(DevCa {
            params,
            key,
            cert_pem: cert.pem(),
        })
    }

    /// A node certificate signed by this CA.
    pub fn issue(&self, node_name: &str) -> Result<QuicTls, TransferError> {
        let mut params = CertificateParams::new(vec![PEER_TLS_SERVER_NAME.to_string()])
            .map_err(rcgen_err("node certificate parameters"))?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, node_name);
        params.distinguished_name = dn;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().map_err(rcgen_err("generate a node key"))?;
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(rcgen_err("sign a node certificate"))?;
        Ok(QuicTls {
            ca_cert_pem: self.cert_pem.clone(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}
