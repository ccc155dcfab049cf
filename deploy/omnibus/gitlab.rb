# jobtoken-gateway as the authorizer of GitLab Omnibus's bundled nginx: add to /etc/gitlab/gitlab.rb,
# copy the two files to /etc/gitlab/jobtoken/, then `gitlab-ctl reconfigure`.
#   /etc/gitlab/jobtoken/jobtoken-decision-http.conf   <- deploy/nginx/jobtoken-decision-http.conf
#   /etc/gitlab/jobtoken/jobtoken-decision-api.conf    <- deploy/omnibus/jobtoken-decision-api.conf
# The http{} part (maps, the gateway's upstreams, the internal server on 127.0.0.1:8181 that the
# gateway's proxy listener forwards to) goes into nginx.conf's http{} block; the location for
# /api/v4/ goes into GitLab's server{} block. Run the gateway beside GitLab with
# GATEWAY_DECISION_PORT=8082, GATEWAY_UPSTREAM=http://127.0.0.1:8181,
# GATEWAY_TRUSTED_PROXIES='["127.0.0.1/32"]', GATEWAY_UPSTREAM_VALIDATION=true.
nginx['custom_nginx_config'] = "include /etc/gitlab/jobtoken/jobtoken-decision-http.conf;\n"
nginx['custom_gitlab_server_config'] = "include /etc/gitlab/jobtoken/jobtoken-decision-api.conf;\n"
