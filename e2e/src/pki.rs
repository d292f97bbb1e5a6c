//! Certificates for a throwaway control plane: one CA that signs the
//! apiserver's serving certificate and client certificates (admin, kubelet).

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};

use crate::Error;

pub(crate) struct Pem {
    /// The certificate, or for a bare key pair its public key.
    pub cert: String,
    pub key: String,
}

pub(crate) struct Pki {
    issuer: CertifiedIssuer<'static, KeyPair>,
    pub ca: String,
    pub serving: Pem,
    pub admin: Pem,
    /// Signs service-account tokens; its public half verifies them.
    pub service_account_key: Pem,
}

impl Pki {
    /// `addresses`: the IPs the apiserver serves on besides 127.0.0.1.
    pub fn generate(addresses: &[IpAddr]) -> Result<Self, Error> {
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.distinguished_name = name("vispyr-e2e-ca", None);
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

        let mut serving = CertificateParams::new(vec![
            "localhost".to_string(),
            "kubernetes".to_string(),
            "kubernetes.default".to_string(),
            "kubernetes.default.svc".to_string(),
        ])?;
        serving
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        serving
            .subject_alt_names
            .extend(addresses.iter().map(|ip| SanType::IpAddress(*ip)));
        serving.distinguished_name = name("kube-apiserver", None);
        serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];

        let serving = sign(serving, &ca)?;
        // The apiserver maps O to groups: system:masters is cluster-admin.
        let admin = sign(client_params("vispyr-e2e-admin", "system:masters")?, &ca)?;
        Ok(Self {
            ca: ca.pem(),
            issuer: ca,
            serving,
            admin,
            service_account_key: {
                let key = KeyPair::generate()?;
                Pem {
                    cert: key.public_key_pem(),
                    key: key.serialize_pem(),
                }
            },
        })
    }

    /// A client certificate for user `common` in group `organization`.
    pub fn client(&self, common: &str, organization: &str) -> Result<Pem, Error> {
        sign(client_params(common, organization)?, &self.issuer)
    }
}

fn client_params(common: &str, organization: &str) -> Result<CertificateParams, Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = name(common, Some(organization));
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    Ok(params)
}

fn name(common: &str, organization: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common);
    if let Some(o) = organization {
        dn.push(DnType::OrganizationName, o);
    }
    dn
}

fn sign(params: CertificateParams, ca: &CertifiedIssuer<'_, KeyPair>) -> Result<Pem, Error> {
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, ca)?;
    Ok(Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}
