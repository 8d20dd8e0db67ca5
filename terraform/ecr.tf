# The image registry: one repository, mesh-broker, with immutable tags (a tag, once pushed, always
# names the same image: the commit SHA tags and the release tags v* alike), scanned on push.
resource "aws_ecr_repository" "mesh_broker" {
  name                 = local.app_name
  image_tag_mutability = "IMMUTABLE"

  image_scanning_configuration {
    scan_on_push = true
  }

  encryption_configuration {
    encryption_type = "AES256"
  }
}

# Untagged images go after 14 days; release images (v*) are matched by rule 2 and so are never
# expired by rule 3, which keeps the newest ecr_keep_images of everything else (commit SHA tags).
resource "aws_ecr_lifecycle_policy" "mesh_broker" {
  repository = aws_ecr_repository.mesh_broker.name

  policy = jsonencode({
    rules = [
      {
        rulePriority = 1
        description  = "Expire untagged images after 14 days"
        selection = {
          tagStatus   = "untagged"
          countType   = "sinceImagePushed"
          countUnit   = "days"
          countNumber = 14
        }
        action = { type = "expire" }
      },
      {
        rulePriority = 2
        description  = "Keep release images (v*)"
        selection = {
          tagStatus      = "tagged"
          tagPatternList = ["v*"]
          countType      = "imageCountMoreThan"
          countNumber    = 9999
        }
        action = { type = "expire" }
      },
      {
        rulePriority = 3
        description  = "Keep the newest commit images"
        selection = {
          tagStatus   = "any"
          countType   = "imageCountMoreThan"
          countNumber = var.ecr_keep_images
        }
        action = { type = "expire" }
      },
    ]
  })
}
