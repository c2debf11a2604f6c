//! `navis.auth.v1.TokenAdmin` over gRPC: request/response conversion around
//! [`TokenService`](crate::admin::TokenService). The admin credential is checked by
//! [`AdminAuth`](super::AdminAuth) before any of this runs.

use tonic::{Request, Response, Status};

use super::{AdminAuth, admin_status, token_info};
use crate::admin::{IssuedPair, NewApiKey, NewGrant, TokenRef, TokenService};
use crate::pb::{self, revoke_token_request::Target, token_admin_server};
use crate::store::Changed;

/// The gRPC face of the [`TokenService`].
#[derive(Clone, Debug)]
pub struct AdminService {
    svc: TokenService,
}

/// The admin server with its credential check in front.
pub type AdminServer = tonic::service::interceptor::InterceptedService<
    token_admin_server::TokenAdminServer<AdminService>,
    AdminInterceptor,
>;

/// The interceptor type wrapping [`AdminAuth`].
#[derive(Clone, Debug)]
pub struct AdminInterceptor(AdminAuth);

impl tonic::service::Interceptor for AdminInterceptor {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        self.0.check(req)
    }
}

impl AdminService {
    /// Serves `svc`.
    pub fn new(svc: TokenService) -> Self {
        AdminService { svc }
    }

    /// The tonic server, accepting only calls that carry `admin_token`.
    pub fn into_server(self, admin: AdminAuth) -> AdminServer {
        token_admin_server::TokenAdminServer::with_interceptor(self, AdminInterceptor(admin))
    }
}

fn pair(p: IssuedPair) -> pb::OAuthTokens {
    pb::OAuthTokens {
        access: Some(token_info(&p.access.record)),
        refresh: Some(token_info(&p.refresh.record)),
        access_token: p.access.secret.into_exposed(),
        refresh_token: p.refresh.secret.into_exposed(),
    }
}

fn revoked(changed: Vec<Changed>) -> pb::RevokeResponse {
    pb::RevokeResponse {
        revoked: u32::try_from(changed.len()).unwrap_or(u32::MAX),
        token_ids: changed.into_iter().map(|c| c.token_id).collect(),
    }
}

#[tonic::async_trait]
impl token_admin_server::TokenAdmin for AdminService {
    async fn create_api_key(
        &self,
        req: Request<pb::CreateApiKeyRequest>,
    ) -> Result<Response<pb::CreateApiKeyResponse>, Status> {
        let r = req.into_inner();
        let key = self
            .svc
            .create_api_key(NewApiKey {
                subject: r.subject,
                scopes: r.scopes,
                name: r.name,
                ttl_seconds: r.ttl_seconds,
                resource: r.resource,
            })
            .await
            .map_err(admin_status)?;
        Ok(Response::new(pb::CreateApiKeyResponse {
            info: Some(token_info(&key.record)),
            api_key: key.secret.into_exposed(),
        }))
    }

    async fn rotate_api_key(
        &self,
        req: Request<pb::RotateApiKeyRequest>,
    ) -> Result<Response<pb::RotateApiKeyResponse>, Status> {
        let r = req.into_inner();
        let (key, old_expires_at) = self
            .svc
            .rotate_api_key(&r.token_id, r.grace_period_seconds)
            .await
            .map_err(admin_status)?;
        Ok(Response::new(pb::RotateApiKeyResponse {
            info: Some(token_info(&key.record)),
            api_key: key.secret.into_exposed(),
            old_expires_at,
        }))
    }

    async fn issue_o_auth_tokens(
        &self,
        req: Request<pb::IssueOAuthTokensRequest>,
    ) -> Result<Response<pb::OAuthTokens>, Status> {
        let r = req.into_inner();
        let p = self
            .svc
            .issue_oauth(NewGrant {
                subject: r.subject,
                client_id: r.client_id,
                scopes: r.scopes,
                resource: r.resource,
                access_ttl_seconds: r.access_ttl_seconds,
                refresh_ttl_seconds: r.refresh_ttl_seconds,
            })
            .await
            .map_err(admin_status)?;
        Ok(Response::new(pair(p)))
    }

    async fn refresh_o_auth_tokens(
        &self,
        req: Request<pb::RefreshOAuthTokensRequest>,
    ) -> Result<Response<pb::OAuthTokens>, Status> {
        let r = req.into_inner();
        let p = self
            .svc
            .refresh(&r.refresh_token, &r.client_id, &r.scopes)
            .await
            .map_err(admin_status)?;
        Ok(Response::new(pair(p)))
    }

    async fn revoke_token(
        &self,
        req: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeResponse>, Status> {
        let target = match &req.get_ref().target {
            Some(Target::TokenId(id)) => TokenRef::Id(id),
            Some(Target::Token(t)) => TokenRef::Token(t),
            None => return Err(Status::invalid_argument("token_id or token is required")),
        };
        let changed = self.svc.revoke_token(target).await.map_err(admin_status)?;
        Ok(Response::new(revoked(changed)))
    }

    async fn revoke_grant(
        &self,
        req: Request<pb::RevokeGrantRequest>,
    ) -> Result<Response<pb::RevokeResponse>, Status> {
        let r = req.get_ref();
        let changed = self
            .svc
            .revoke_grant(&r.subject, &r.client_id)
            .await
            .map_err(admin_status)?;
        Ok(Response::new(revoked(changed)))
    }

    async fn revoke_subject(
        &self,
        req: Request<pb::RevokeSubjectRequest>,
    ) -> Result<Response<pb::RevokeResponse>, Status> {
        let changed = self
            .svc
            .revoke_subject(&req.get_ref().subject)
            .await
            .map_err(admin_status)?;
        Ok(Response::new(revoked(changed)))
    }

    async fn list_tokens(
        &self,
        req: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        let r = req.into_inner();
        let (records, next) = self
            .svc
            .list(
                &r.subject,
                &r.client_id,
                r.include_inactive,
                r.page_size as usize,
                Some(r.page_token),
            )
            .await
            .map_err(admin_status)?;
        Ok(Response::new(pb::ListTokensResponse {
            tokens: records.iter().map(token_info).collect(),
            next_page_token: next.unwrap_or_default(),
        }))
    }
}
