//! Certificates for a throwaway control plane: one CA that signs the
//! apiserver's serving certificate and an admin client certificate.

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
    pub ca: String,
    pub serving: Pem,
    pub admin: Pem,
    /// Signs service-account tokens; its public half verifies them.
    pub service_account_key: Pem,
}

impl Pki {
    pub fn generate() -> Result<Self, Error> {
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
        serving.distinguished_name = name("kube-apiserver", None);
        serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];

        // The apiserver maps O to groups: system:masters is cluster-admin.
        let mut admin = CertificateParams::new(Vec::<String>::new())?;
        admin.distinguished_name = name("vispyr-e2e-admin", Some("system:masters"));
        admin.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];

        Ok(Self {
            ca: ca.pem(),
            serving: sign(serving, &ca)?,
            admin: sign(admin, &ca)?,
            service_account_key: {
                let key = KeyPair::generate()?;
                Pem {
                    cert: key.public_key_pem(),
                    key: key.serialize_pem(),
                }
            },
        })
    }
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
