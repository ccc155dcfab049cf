#!/usr/bin/env ruby
# frozen_string_literal: true

# What GitLab's request-reading stack would read from raw HTTP requests: the differential
# oracle of tests/oracle/ (issue 16). Run with Debian's ruby and the gems of ruby-rack,
# ruby-actionpack, ruby-grape and ruby-doorkeeper (scripts/system-deps.sh installs them).
#
# Protocol: one JSON object per line on stdin,
#   {"method": "POST", "target": "/api/v4/x?a=1", "headers": [["Name", "value"], ...],
#    "body": "<base64>", "named_headers": ["X-Nuget-Apikey"]}
# (`named_headers`: the TokenLocator `http_header` locations to read, as `http_header:<name>`)
# and one JSON object per line on stdout, in order (see `read_request`). Strings GitLab would
# read are printed as {"s": "<base64 of the bytes>"}; other values (a Hash from `job_token[x]=`,
# an Array, a number from JSON) as {"type": "Hash", "inspect": "..."}.
#
# Mirrors (GitLab source, cited per carrier below):
# - lib/gitlab/auth/auth_finders.rb (AuthFinders): the carriers of find_user_from_job_bearer_token
#   (Doorkeeper `access_token_methods`: :from_access_token_param, :from_bearer_authorization,
#   :from_bearer_param, config/initializers/doorkeeper.rb), find_personal_access_token
#   (private_token param / HTTP_PRIVATE_TOKEN), find_user_from_job_token_basic_auth
#   (has_basic_credentials? + user_name_and_password), find_user_from_job_token_query_params_or_header
#   (params[:job_token] || params[:token] || env['HTTP_JOB_TOKEN']), deploy_token_from_request.
# - lib/gitlab/api_authentication/token_locator.rb (TokenLocator#extract): every location.
# - the stack in front: Rack::MethodOverride (Rails' default middleware), Grape's Formatter
#   middleware with GitLab's `format :json` / `content_type :json, 'application/json'`
#   (lib/api/api.rb), then `ActionDispatch::Request.new(env)` as APIGuard#current_request.

require "base64"
require "json"
require "stringio"
require "rack"
require "action_dispatch"
require "action_controller"
require "active_support/core_ext/object/blank"
require "grape"
require "doorkeeper/oauth/token" # only this file: Doorkeeper's bearer rules, without Rails config

# GitLab's config/initializers/mime_types.rb: JSON is application/json and the LFS type only.
Mime::Type.unregister :json
Mime::Type.register "application/json", :json, %w[application/vnd.git-lfs+json application/json]

# The env a Puma-like server builds: CONTENT_TYPE / CONTENT_LENGTH without HTTP_, other headers
# upper-cased with '-' as '_', repeated headers joined with ", ".
def build_env(request)
  path, _, query = request.fetch("target").partition("?")
  body = Base64.decode64(request.fetch("body", ""))
  env = {
    "REQUEST_METHOD" => request.fetch("method"),
    "SCRIPT_NAME" => "",
    "PATH_INFO" => path,
    "QUERY_STRING" => query,
    "SERVER_NAME" => "gitlab.test",
    "SERVER_PORT" => "80",
    "SERVER_PROTOCOL" => "HTTP/1.1",
    "HTTP_VERSION" => "HTTP/1.1",
    "rack.url_scheme" => "http",
    "rack.input" => StringIO.new(body.b),
    "rack.errors" => StringIO.new,
    "rack.version" => [1, 3],
    "rack.multithread" => false,
    "rack.multiprocess" => false,
    "rack.run_once" => false,
    "REMOTE_ADDR" => "127.0.0.1"
  }
  request.fetch("headers").each do |name, value|
    key = name.upcase.tr("-", "_")
    key = "HTTP_#{key}" unless %w[CONTENT_TYPE CONTENT_LENGTH].include?(key)
    env[key] = env.key?(key) ? "#{env[key]}, #{value}" : value.dup
  end
  env["CONTENT_LENGTH"] = body.bytesize.to_s unless body.empty?
  env
end

def value_out(value)
  case value
  when nil then nil
  when String then { "s" => Base64.strict_encode64(value.b) }
  else { "type" => value.class.name, "inspect" => value.inspect[0, 300] }
  end
end

def jsonable(value)
  case value
  when Hash then value.to_h { |k, v| [k.to_s.dup.force_encoding("UTF-8").scrub, jsonable(v)] }
  when Array then value.map { |v| jsonable(v) }
  when String
    text = value.dup.force_encoding("UTF-8")
    text.valid_encoding? ? text : { "$b64" => Base64.strict_encode64(value.b) }
  when Numeric, true, false, nil then value
  else value.class.name
  end
end

# AuthFinders and TokenLocator over one ActionDispatch::Request (APIGuard#current_request).
class Finders
  include ActionController::HttpAuthentication::Basic

  def initialize(request, named_headers = [])
    @request = request
    @named_headers = named_headers
  end

  def read
    req = @request
    out = {}
    params = req.params # request_parameters.merge(query_parameters): the query wins
    # Doorkeeper::OAuth::Token, in GitLab's access_token_methods order.
    out["access_token_param"] = Doorkeeper::OAuth::Token.from_access_token_param(req)
    out["bearer_authorization"] = Doorkeeper::OAuth::Token.from_bearer_authorization(req)
    out["bearer_token_param"] = Doorkeeper::OAuth::Token.from_bearer_param(req)
    # find_personal_access_token / extract_personal_access_token
    out["private_token_param"] = params[:private_token]
    out["private_token_header"] = req.env["HTTP_PRIVATE_TOKEN"]
    # find_user_from_job_token_basic_auth (login and password present)
    if has_basic_credentials?(req)
      login, password = user_name_and_password(req)
      out["basic_user"] = login
      out["basic_password"] = password
    end
    # find_user_from_job_token_query_params_or_header
    out["job_token_param"] = params[:job_token]
    out["token_param"] = params[:token]
    out["job_token_header"] = req.env["HTTP_JOB_TOKEN"]
    # deploy_token_from_request
    out["deploy_token_header"] = req.env["HTTP_DEPLOY_TOKEN"]
    # API::Helpers::PackagesManagerClientsHelpers#decode_token (find_job_from_http_basic_auth)
    encoded = req.headers["Authorization"].to_s.split("Basic ", 2).second
    out["packages_basic_password"] = Base64.decode64(encoded || "").split(":", 2).second
    locator(req, out)
    out.transform_values { |v| value_out(v) }.compact
  end

  private

  # TokenLocator#extract, every VALID_LOCATIONS entry (http_header: any named header, which
  # the caller reads from the headers it sent).
  def locator(req, out)
    username, password = user_name_and_password(req)
    if username.present? && password.present?
      out["locator_basic_user"] = username
      out["locator_basic_password"] = password
    end
    authorization = req.headers["Authorization"]
    if authorization.present?
      out["locator_http_token"] = authorization
      out["locator_http_bearer_token"] = authorization.split(" ").last
    end
    @named_headers.each { |name| out["http_header:#{name}"] = req.headers[name].presence }
    out["locator_deploy_token_header"] = req.headers["Deploy-Token"].presence
    out["locator_job_token_header"] = req.headers["Job-Token"].presence
    out["locator_private_token_header"] = req.headers["Private-Token"].presence
    query = req.query_parameters
    %w[token private_token job_token access_token].each do |name|
      out["locator_#{name}_param"] = query[name].presence
    end
  end
end

def guarded
  [yield, nil]
rescue StandardError, SystemStackError => e
  [nil, "#{e.class}: #{e.message[0, 200]}"]
end

# Rails routes: Rack::MethodOverride, then the controller's request.
def read_rails(request)
  env = build_env(request)
  method_override = Rack::MethodOverride.new(->(e) { [200, {}, [e["REQUEST_METHOD"]]] })
  _, _, body = method_override.call(env)
  effective = body.first
  req = ActionDispatch::Request.new(env)
  carriers, error = guarded { Finders.new(req, request.fetch("named_headers", [])).read }
  params, = guarded { jsonable(req.params.to_h) }
  { "method" => effective, "carriers" => carriers, "error" => error, "params" => params }
end

# The API: Rack::MethodOverride, then Grape (GitLab's format settings) and the endpoint.
class OracleAPI < Grape::API
  format :json
  content_type :json, "application/json"

  route :any, "*path" do
    req = ActionDispatch::Request.new(env)
    carriers, error = guarded { Finders.new(req, env["oracle.named_headers"]).read }
    grape_params, = guarded { jsonable(params.to_h) }
    env["oracle.result"] = { "carriers" => carriers, "error" => error, "params" => grape_params }
    {}
  end
end

def read_api(request)
  env = build_env(request)
  env["oracle.named_headers"] = request.fetch("named_headers", [])
  app = Rack::MethodOverride.new(OracleAPI)
  response, error = guarded { app.call(env) }
  result = env["oracle.result"] || { "carriers" => nil, "error" => error, "params" => nil }
  result.merge("status" => response&.first, "method" => env["REQUEST_METHOD"])
end

def read_request(request)
  rails, rails_error = guarded { read_rails(request) }
  api, api_error = guarded { read_api(request) }
  { "rails" => rails || { "error" => rails_error }, "api" => api || { "error" => api_error } }
end

# One JSON [function, argument] per line in, its Ruby result out: the primitives
# gateway/core/params.py mirrors, compared one by one (tests/oracle/test_oracle.py).
PRIMITIVES = {
  "split2" => ->(arg) { arg.split(" ", 2) }, # ActionPack auth_scheme / auth_param
  "media_type" => ->(arg) { Rack::MediaType.type(arg) },
  # Rack::QueryParser#normalize_params on one `key=v` pair: each top-level key, and whether its
  # value is the plain string "v"
  "param" => lambda { |arg|
    Rack::Utils.parse_nested_query("#{arg}=v").map { |key, value| [key, value == "v"] }
  }
}.freeze

if ARGV.first == "--primitives"
  $stdout.sync = true
  $stdin.each_line do |line|
    function, argument = JSON.parse(line)
    result, error = guarded { PRIMITIVES.fetch(function).call(argument) }
    puts JSON.generate(error ? { "error" => error } : { "result" => result })
  end
  exit
end

if ARGV.first == "--decode64" # one JSON string per line in, its Base64.decode64 (base64) out
  $stdout.sync = true
  $stdin.each_line { |line| puts Base64.strict_encode64(Base64.decode64(JSON.parse(line))) }
  exit
end

if ARGV.first == "--versions"
  puts JSON.generate(
    "ruby" => RUBY_VERSION, "rack" => Rack.release, "actionpack" => ActionPack.version.to_s,
    "grape" => Grape::VERSION, "doorkeeper" => Gem.loaded_specs["doorkeeper"]&.version.to_s
  )
  exit
end

$stdout.sync = true
$stdin.each_line do |line|
  puts JSON.generate(read_request(JSON.parse(line)))
end
